"""SAE quality on a VLM, split by modality: L0, explained variance, MSE, dead features, spliced CE.

Per batch, three forward passes: clean (recording layer L), the SAE's reconstruction spliced in
at layer L, and layer L's output zero-ablated. CE is the next-token loss on text targets (image
placeholders are not predictions); CE recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from saev_curate.core.devices import module_device, to_model_inputs
from saev_curate.core.errors import InputError
from saev_curate.sae.model import SAE


@dataclass
class TokenMetrics:
    """Reconstruction quality on one set of tokens."""

    n_tokens: int
    l0: float  # mean active features per token
    explained_variance: float  # 1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2
    mse: float  # mean squared error per element
    dead_fraction: float  # features that never fired on these tokens


@dataclass
class SAEEvaluation:
    image: TokenMetrics
    text: TokenMetrics
    all: TokenMetrics
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_recovered: float
    n_rows: int
    n_ce_targets: int
    row_errors: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        lines = [f"{'tokens':<8}{'n':>9}{'L0':>9}{'expl.var':>10}{'MSE':>12}{'dead':>8}"]
        for name in ("image", "text", "all"):
            m: TokenMetrics = getattr(self, name)
            lines.append(f"{name:<8}{m.n_tokens:>9}{m.l0:>9.1f}{m.explained_variance:>10.3f}{m.mse:>12.4g}"
                         f"{m.dead_fraction:>8.1%}")
        lines.append(f"next-token CE on {self.n_ce_targets} text targets: clean {self.ce_clean:.3f}  SAE spliced "
                     f"{self.ce_sae:.3f}  zero-ablated {self.ce_zero:.3f}  CE recovered {self.ce_recovered:.3f}")
        if self.row_errors:
            lines.append(f"{len(self.row_errors)} rows could not be evaluated (see row_errors)")
        return "\n".join(lines)


class _Accumulator:
    """Streaming sums for one token set: no activations are kept across batches."""

    def __init__(self, d_in: int, d_sae: int) -> None:
        self.n = 0
        self.active = 0.0
        self.sq_err = 0.0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_sq = 0.0
        self.fired = torch.zeros(d_sae, dtype=torch.bool)

    def add(self, x: torch.Tensor, recon: torch.Tensor, code: torch.Tensor) -> None:
        if len(x) == 0:
            return
        x64 = x.double()
        self.n += len(x)
        self.active += float((code > 0).sum())
        self.sq_err += float((recon.double() - x64).pow(2).sum())
        self.sum_x += x64.sum(0).cpu()
        self.sum_sq += float(x64.pow(2).sum())
        self.fired |= (code > 0).any(0).cpu()

    def result(self) -> TokenMetrics:
        if self.n == 0:
            return TokenMetrics(0, float("nan"), float("nan"), float("nan"), float("nan"))
        total_var = self.sum_sq - float(self.sum_x.pow(2).sum()) / self.n
        return TokenMetrics(
            n_tokens=self.n,
            l0=self.active / self.n,
            explained_variance=1.0 - self.sq_err / total_var if total_var > 0 else float("nan"),
            mse=self.sq_err / (self.n * len(self.sum_x)),
            dead_fraction=float((~self.fired).float().mean()),
        )


def _replace_output(output, new: torch.Tensor):
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new,) + tuple(output[1:])
    raise InputError(f"cannot splice into a decoder layer output of type {type(output).__name__}")


def _first(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _forward_with(model, inputs: dict, layer_module, edit: Callable | None) -> torch.Tensor:
    """Logits of a full forward; `edit(resid) -> resid` rewrites layer L's output when given."""
    handle = None
    if edit is not None:
        handle = layer_module.register_forward_hook(lambda _m, _a, out: _replace_output(out, edit(_first(out))))
    try:
        return model(**inputs, use_cache=False).logits
    finally:
        if handle is not None:
            handle.remove()


def _ce_sum(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor) -> float:
    """Summed next-token CE over positions whose *next* token is in `target_mask`."""
    targets = target_mask[:, 1:]
    if not targets.any():
        return 0.0
    pred = logits[:, :-1][targets].float()
    return float(F.cross_entropy(pred, input_ids[:, 1:][targets], reduction="sum"))


@torch.no_grad()
def evaluate_sae(
    model,
    processor,
    sae: SAE,
    dataset,
    layer: int | str | None = None,
    *,
    mode: str = "full",
    batch_size: int = 8,
    max_rows: int | None = None,
    max_length: int | None = None,
    exclude_special_tokens: bool = True,
    progress: bool = True,
    min_usable_share: float | None = None,
) -> SAEEvaluation:
    """Evaluate `sae` at decoder layer `layer` (default: the SAE's own hook) of `model` on `dataset` rows.

    Special tokens (BOS, chat markers) are left out of the metrics and not spliced when
    `exclude_special_tokens`, matching how SAE-V trains; padding never counts.
    """
    from saev_curate.io.datasets import raw_rows
    from saev_curate.vlm.capture import capture_activations
    from saev_curate.vlm.layers import context_length, decoder_layers, resolve_sae_layer
    from saev_curate.vlm.rows import prepare_batch

    L = resolve_sae_layer(model, sae, layer)
    layer_module = decoder_layers(model)[L]
    n_rows = len(dataset) if max_rows is None else min(max_rows, len(dataset))
    if n_rows == 0:
        raise InputError("the evaluation dataset is empty")
    acc = {name: _Accumulator(sae.cfg.d_in, sae.cfg.d_sae) for name in ("image", "text", "all")}
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_targets = 0
    errors: dict[int, str] = {}
    device = module_device(model)
    for start in tqdm(range(0, n_rows, batch_size), desc="evaluating SAE", disable=not progress, unit="batch"):
        idx = list(range(start, min(start + batch_size, n_rows)))
        prepared = prepare_batch(processor, raw_rows(dataset, idx), mode=mode, max_length=max_length,
                                 on_error="record", require_images=False, max_context=context_length(model))
        errors.update({idx[j]: e for j, e in enumerate(prepared.row_errors) if e is not None})
        if not prepared.kept:
            continue
        acts = capture_activations(model, prepared, L, exclude_special_tokens=exclude_special_tokens,
                                   processor=processor)
        splice_mask = (acts.image_mask | acts.text_mask).to(device)
        x = acts.resid[splice_mask].to(sae.device)
        code = sae.encode(x)
        recon = sae.decode(code)
        on_image = acts.image_mask[splice_mask].to(sae.device)
        acc["all"].add(x, recon, code)
        acc["image"].add(x[on_image], recon[on_image], code[on_image])
        acc["text"].add(x[~on_image], recon[~on_image], code[~on_image])

        inputs = to_model_inputs(prepared.inputs, model)
        target_mask = acts.text_mask.to(device) & acts.attention_mask.bool().to(device)
        n_targets += int(target_mask[:, 1:].sum())

        def splice(resid, fill):
            out = resid.clone()
            out[splice_mask] = fill(resid[splice_mask]).to(resid.dtype)
            return out

        for name, edit in (
            ("clean", None),
            ("sae", lambda r: splice(r, lambda v: sae(v.to(sae.device)).to(r.device))),
            ("zero", lambda r: splice(r, torch.zeros_like)),
        ):
            ce[name] += _ce_sum(_forward_with(model, inputs, layer_module, edit), acts.input_ids.to(device), target_mask)
    from saev_curate.core.row_errors import check_usable

    check_usable(n_rows, list(errors.values()), min_usable_share=min_usable_share, action="eval-sae")
    if n_targets == 0:
        raise InputError(f"no text tokens to compute cross-entropy on in the {n_rows - len(errors)} usable rows "
                         f"(mode={mode!r} shows {'only the prompt' if mode == 'prompt' else 'the ' + mode + ' text'}"
                         f"{'; every text token is a special token and exclude_special_tokens is on' if exclude_special_tokens else ''}"
                         "); use rows with text, or another --mode")
    clean, spliced, zero = (ce[k] / n_targets for k in ("clean", "sae", "zero"))
    recovered = (zero - spliced) / (zero - clean) if zero != clean else float("nan")
    return SAEEvaluation(acc["image"].result(), acc["text"].result(), acc["all"].result(), clean, spliced, zero,
                         recovered, n_rows - len(errors), n_targets, errors)


def save_evaluation(result: SAEEvaluation, path) -> None:
    with open(path, "w") as f:
        json.dump(result.to_dict(), f, indent=2, default=str)
