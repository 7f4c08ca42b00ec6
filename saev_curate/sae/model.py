"""Sparse autoencoder architectures: `standard` (ReLU, the SAE-V paper), `topk` and `jumprelu`.

One class, three activation rules. Weights follow the SAELens convention
(`W_enc [d_in, d_sae]`, `W_dec [d_sae, d_in]`), so checkpoints move between libraries unchanged.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saev_curate.core.devices import dtype_to_str, str_to_dtype
from saev_curate.core.errors import CheckpointError
from saev_curate.sae.saving import save_sae

Architecture = Literal["standard", "topk", "jumprelu"]
ARCHITECTURES: tuple[str, ...] = ("standard", "topk", "jumprelu")

_LAYER_IN_HOOK = re.compile(r"(?:^|\.)(?:blocks|layers|layer|h)\.(\d+)(?:\.|$)")


def layer_from_hook_name(hook_name: str | None) -> int | None:
    """Layer index named by a hook ('blocks.16.hook_resid_post', 'model.layers.16', 'layers.16')."""
    if not hook_name:
        return None
    match = _LAYER_IN_HOOK.search(hook_name)
    return int(match.group(1)) if match else None


@dataclass
class SAEConfig:
    """Shape, activation rule and provenance of an SAE.

    `input_scale` multiplies raw activations before encoding (SAE-V trains on inputs scaled to norm
    sqrt(d_in)); `SAE.fold_input_scale` moves it into the weights so the SAE takes raw activations.
    """

    d_in: int
    d_sae: int
    architecture: Architecture = "standard"
    k: int | None = None
    apply_b_dec_to_input: bool = False
    input_scale: float = 1.0
    dtype: str = "float32"
    # provenance, kept through save/load (SAELens `metadata`)
    model_name: str | None = None
    hook_name: str | None = None
    hook_layer: int | None = None
    context_size: int | None = None
    dataset_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise CheckpointError(
                f"unknown SAE architecture {self.architecture!r}; saev-curate supports "
                f"{', '.join(ARCHITECTURES)}"
            )
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CheckpointError(f"SAE config: {name} must be a positive integer, got {value!r}")
        if self.architecture == "topk":
            if not isinstance(self.k, int) or not 0 < self.k <= self.d_sae:
                raise CheckpointError(
                    f"SAE config: a topk SAE needs an integer k with 0 < k <= d_sae={self.d_sae}, got {self.k!r}"
                )
        if not (self.input_scale > 0 and self.input_scale < float("inf")):
            raise CheckpointError(f"SAE config: input_scale must be a positive finite number, got {self.input_scale!r}")
        str_to_dtype(self.dtype)
        if self.hook_layer is None:
            self.hook_layer = layer_from_hook_name(self.hook_name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SAEConfig":
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in data.items() if k in names and k != "extra"}
        extra = dict(data.get("extra") or {})
        extra.update({k: v for k, v in data.items() if k not in names})
        return cls(**known, extra=extra)


class SAE(nn.Module):
    """A sparse autoencoder over `[..., d_in]` activations.

    standard: f = ReLU(x W_enc + b_enc); topk: keep the k largest pre-activations (ReLU'd);
    jumprelu: ReLU(pre) where pre > threshold. x_hat = f W_dec + b_dec. With
    `apply_b_dec_to_input`, b_dec is subtracted from x before encoding (SAELens/sparsify convention).
    """

    def __init__(self, cfg: SAEConfig, *, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        dtype = str_to_dtype(cfg.dtype)
        kw = {"dtype": dtype, "device": device}
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, **kw))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, **kw))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.sparsity: Tensor | None = None  # log10 feature density, when a checkpoint has one

    # ----------------------------------------------------------------- construction
    @classmethod
    def init_paper(cls, cfg: SAEConfig, *, seed: int | None = None, device=None) -> "SAE":
        """The SAE-V init: decoder rows random with norm 0.1, W_enc = W_dec^T, zero biases."""
        sae = cls(cfg, device=device)
        gen = torch.Generator(device="cpu")
        if seed is not None:
            gen.manual_seed(seed)
        w = torch.randn(cfg.d_sae, cfg.d_in, generator=gen, dtype=torch.float32)
        w = 0.1 * w / w.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            sae.W_dec.copy_(w)
            sae.W_enc.copy_(w.T)
        return sae

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def _apply(self, fn, *args, **kwargs):  # keep cfg.dtype in step with .to(dtype) / .half()
        out = super()._apply(fn, *args, **kwargs)
        self.cfg.dtype = dtype_to_str(self.W_enc.dtype)
        return out

    # ----------------------------------------------------------------- forward pieces
    def _prepare(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"SAE expects inputs [..., {self.cfg.d_in}], got shape {tuple(x.shape)}")
        x = x.to(self.dtype)
        if self.cfg.input_scale != 1.0:
            x = x * self.cfg.input_scale
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x

    def pre_activations(self, x: Tensor) -> Tensor:
        """Encoder pre-activations `x W_enc + b_enc` for `[..., d_in]` inputs."""
        x = self._prepare(x)
        flat = x.reshape(-1, self.cfg.d_in)
        pre = torch.addmm(self.b_enc, flat, self.W_enc)
        return pre.reshape(*x.shape[:-1], self.cfg.d_sae)

    def encode_topk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """TopK only: the k active values (ReLU'd) and their feature indices, `[..., k]` each."""
        if self.cfg.architecture != "topk":
            raise ValueError("encode_topk is for topk SAEs; use encode() for other architectures")
        values, indices = self.pre_activations(x).topk(self.cfg.k, dim=-1, sorted=False)
        return values.relu(), indices

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations `[..., d_sae]` (dense)."""
        if self.cfg.architecture == "topk":
            values, indices = self.encode_topk(x)
            out = torch.zeros(*values.shape[:-1], self.cfg.d_sae, dtype=values.dtype, device=values.device)
            return out.scatter_(-1, indices, values)
        pre = self.pre_activations(x)
        if self.cfg.architecture == "jumprelu":
            return pre.relu() * (pre > self.threshold)
        return pre.relu()

    def decode_sparse(self, values: Tensor, indices: Tensor) -> Tensor:
        """Reconstruct from `[..., k]` active values/indices through those k decoder rows only."""
        lead = values.shape[:-1]
        k = values.shape[-1]
        out = F.embedding_bag(
            indices.reshape(-1, k), self.W_dec, per_sample_weights=values.reshape(-1, k).to(self.dtype), mode="sum"
        )
        out = out + self.b_dec
        return self._unscale(out.reshape(*lead, self.cfg.d_in))

    def decode(self, f: Tensor) -> Tensor:
        """Reconstruction `[..., d_in]` from dense feature activations."""
        f = f.to(self.dtype)
        if self.cfg.architecture == "topk":
            # a TopK code has at most k non-zeros: decode through those rows, unless the caller
            # edited the code (steering, ablation) to have more, where only the dense product is exact
            if f.numel() == 0 or int((f != 0).sum(-1).max()) <= self.cfg.k:
                values, indices = f.topk(self.cfg.k, dim=-1, sorted=False)
                return self.decode_sparse(values, indices)
        flat = f.reshape(-1, self.cfg.d_sae)
        out = torch.addmm(self.b_dec, flat, self.W_dec).reshape(*f.shape[:-1], self.cfg.d_in)
        return self._unscale(out)

    def _unscale(self, out: Tensor) -> Tensor:
        return out / self.cfg.input_scale if self.cfg.input_scale != 1.0 else out

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction of x (topk never materialises the dense code)."""
        if self.cfg.architecture == "topk":
            return self.decode_sparse(*self.encode_topk(x))
        return self.decode(self.encode(x))

    # ----------------------------------------------------------------- weight surgery
    @torch.no_grad()
    def fold_input_scale(self) -> "SAE":
        """Move `cfg.input_scale` into the weights: same outputs, raw activations in (in place)."""
        s = self.cfg.input_scale
        if s != 1.0:
            self.W_enc.mul_(s)
            self.W_dec.div_(s)
            self.b_dec.div_(s)
            self.cfg.extra["folded_input_scale"] = s * float(self.cfg.extra.get("folded_input_scale", 1.0))
            self.cfg.input_scale = 1.0
        return self

    @torch.no_grad()
    def fold_decoder_norms(self) -> Tensor:
        """Give decoder rows unit norm, rescaling the encoder so reconstructions are unchanged.

        Feature activations are multiplied by the old norms (that is the point: SAELens
        `rescale_acts_by_decoder_norm` TopK SAEs rank features by activation x decoder norm).
        """
        norms = self.W_dec.norm(dim=-1).clamp_min(1e-8)
        self.W_dec.div_(norms[:, None])
        self.W_enc.mul_(norms[None, :])
        self.b_enc.mul_(norms)
        if self.cfg.architecture == "jumprelu":
            self.threshold.mul_(norms)
        return norms

    def copy(self) -> "SAE":
        return copy.deepcopy(self)

    # ----------------------------------------------------------------- io shortcuts
    def save(self, path, *, sparsity: Tensor | None = None):
        """Write the SAELens v6 layout (`cfg.json`, `sae_weights.safetensors`, [`sparsity.safetensors`])."""
        return save_sae(self, path, sparsity=sparsity)

    def extra_repr(self) -> str:
        k = f", k={self.cfg.k}" if self.cfg.architecture == "topk" else ""
        return f"{self.cfg.architecture}, d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}{k}, dtype={self.cfg.dtype}"


def estimate_input_scale(activations: Tensor) -> float:
    """SAE-V input scale s = sqrt(d_in) / E||x|| from a sample of activations `[..., d_in]`."""
    x = activations.reshape(-1, activations.shape[-1]).float()
    mean_norm = float(x.norm(dim=-1).mean())
    if not mean_norm > 0:
        raise ValueError("cannot estimate an input scale from activations whose mean norm is zero")
    return x.shape[-1] ** 0.5 / mean_norm
