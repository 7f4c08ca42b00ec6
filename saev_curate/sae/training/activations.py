"""Layer-L activations of a VLM over a dataset, as training batches for an SAE.

`ActivationStream` runs the model batch by batch (early exit at layer L), drops padding (and
optionally BOS/special tokens), tags each token image or text, optionally caps the image:text
ratio, and mixes tokens from many rows in a shuffle buffer. `ActivationCache` writes one pass of
that stream to safetensors shards so several SAEs train from one forward pass, with exact, cheap
resume. Memory is bounded by the buffer (or the shards held), never by the dataset.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from saev_curate.core.devices import dtype_to_str, str_to_dtype
from saev_curate.core.errors import InputError


@dataclass
class StreamConfig:
    """What the SAE sees: which layer, which text, which tokens, how mixed."""

    layer: int | str = 16
    mode: str = "full"  # text shown with the image: "prompt" | "chosen" | "rejected" | "full"
    max_length: int | None = None  # tokens per row; text is truncated, image tokens never are
    model_batch_size: int = 8  # rows per forward pass
    exclude_special_tokens: bool = True  # drop BOS/EOS/chat markers (padding is always dropped)
    max_image_text_ratio: float | None = None  # subsample image tokens to at most ratio x text tokens
    buffer_tokens: int = 65_536  # shuffle-buffer size: tokens from many rows mix before a batch is cut
    seed: int = 0
    min_usable_share: float | None = None  # the row rule (saev_curate.core.row_errors); None: the default share
    max_image_pixels: int | None = None  # larger images are row errors; None: images.max_image_pixels()


def _token_chunks(model, processor, dataset, cfg: StreamConfig, epoch: int, errors: dict[int, str]):
    """One epoch of `(activations [n, d], is_image [n])`, one chunk per model batch, rows in a seeded order."""
    from saev_curate.io.datasets import raw_rows
    from saev_curate.vlm.capture import capture_activations
    from saev_curate.vlm.layers import context_length
    from saev_curate.vlm.rows import prepare_batch

    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7_919 + epoch)).tolist()
    gen = torch.Generator().manual_seed(cfg.seed * 104_729 + epoch)
    for start in range(0, n, cfg.model_batch_size):
        idx = order[start : start + cfg.model_batch_size]
        rows = raw_rows(dataset, idx)  # images undecoded: decoded per row, a bad one is that row's error
        prepared = prepare_batch(processor, rows, mode=cfg.mode, max_length=cfg.max_length, on_error="record",
                                 require_images=False, max_context=context_length(model),
                                 max_image_pixels=cfg.max_image_pixels)
        for j, err in enumerate(prepared.row_errors):
            if err is not None:
                errors[idx[j]] = err
        if not prepared.kept:
            continue
        acts = capture_activations(model, prepared, cfg.layer, exclude_special_tokens=cfg.exclude_special_tokens,
                                   processor=processor)
        keep = acts.image_mask | acts.text_mask
        is_image = acts.image_mask[keep]
        vectors = acts.resid[keep].float().cpu()
        is_image = is_image.cpu()
        if cfg.max_image_text_ratio is not None:
            vectors, is_image = _cap_ratio(vectors, is_image, cfg.max_image_text_ratio, gen)
        yield vectors, is_image


def _cap_ratio(vectors, is_image, ratio: float, gen: torch.Generator):
    n_text = int((~is_image).sum())
    img = torch.nonzero(is_image).flatten()
    allowed = int(math.floor(ratio * n_text))
    if len(img) <= allowed:
        return vectors, is_image
    drop = img[torch.randperm(len(img), generator=gen)[allowed:]]
    keep = torch.ones(len(is_image), dtype=torch.bool)
    keep[drop] = False
    return vectors[keep], is_image[keep]


def shuffle_buffer(chunks: Iterator[tuple[torch.Tensor, torch.Tensor]], batch_size: int, buffer_tokens: int,
                   gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mix token chunks: fill to `buffer_tokens`, shuffle, emit half in batches, refill; flush at the end."""
    buffer_tokens = max(buffer_tokens, 2 * batch_size)
    vecs: list[torch.Tensor] = []
    tags: list[torch.Tensor] = []
    held = 0
    for v, t in chunks:
        vecs.append(v)
        tags.append(t)
        held += len(v)
        if held >= buffer_tokens:
            all_v, all_t = torch.cat(vecs), torch.cat(tags)
            perm = torch.randperm(len(all_v), generator=gen)
            all_v, all_t = all_v[perm], all_t[perm]
            n_out = (len(all_v) // 2 // batch_size) * batch_size
            for i in range(0, n_out, batch_size):
                yield all_v[i : i + batch_size], all_t[i : i + batch_size]
            vecs, tags, held = [all_v[n_out:]], [all_t[n_out:]], len(all_v) - n_out
    if held:
        all_v, all_t = torch.cat(vecs), torch.cat(tags)
        perm = torch.randperm(len(all_v), generator=gen)
        all_v, all_t = all_v[perm], all_t[perm]
        for i in range(0, len(all_v) - batch_size + 1, batch_size):
            yield all_v[i : i + batch_size], all_t[i : i + batch_size]


class ActivationStream:
    """Layer-L activations of `model` over `dataset` rows; an `ActivationSource` for the SAE trainer.

    Epochs repeat the dataset in a new seeded row order. Rows that cannot be used (bad image, empty
    text) are skipped and listed in `row_errors` with the reason; a warning says how many.
    """

    def __init__(self, model, processor, dataset, cfg: StreamConfig | None = None) -> None:
        from saev_curate.vlm.layers import resolve_layer, text_hidden_size

        self.model, self.processor, self.dataset = model, processor, dataset
        self.cfg = cfg or StreamConfig()
        if len(dataset) == 0:
            raise InputError("the dataset is empty: an SAE needs activations to train on")
        self.layer = resolve_layer(model, self.cfg.layer)
        self.d_in = text_hidden_size(model)
        self.row_errors: dict[int, str] = {}

    def chunks(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of per-batch `(activations, is_image)` chunks, before mixing."""
        yield from _token_chunks(self.model, self.processor, self.dataset, self.cfg, epoch, self.row_errors)
        if epoch == 0:
            self.check_rows()
        self._warn_errors()

    def check_rows(self) -> dict[str, Any]:
        """The row rule after a full pass: raise when no row, or too small a share, could be used."""
        from saev_curate.core.row_errors import check_usable

        return check_usable(len(self.dataset), list(self.row_errors.values()),
                            min_usable_share=self.cfg.min_usable_share, action="capturing activations",
                            report=False)

    def iter_batches(self, batch_size: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]:
        """Mixed `[batch_size, d_in]` batches forever (epoch after epoch).

        Resuming at `start_step` replays the forward passes up to it; write an `ActivationCache`
        first when resumes should be cheap.
        """
        step = 0
        for epoch in range(1_000_000):
            gen = torch.Generator().manual_seed(seed * 15_485_863 + epoch)
            produced = False
            for vectors, _ in shuffle_buffer(self.chunks(epoch), batch_size, self.cfg.buffer_tokens, gen):
                produced = True
                if step >= start_step:
                    yield vectors
                step += 1
            if not produced:
                raise InputError(f"the dataset yields fewer than batch_size={batch_size} usable tokens per epoch"
                                 + (f"; {len(self.row_errors)} rows failed, e.g. {next(iter(self.row_errors.values()))}"
                                    if self.row_errors else ""))

    def _warn_errors(self) -> None:
        if self.row_errors:
            from saev_curate.core.row_errors import summary_line

            warnings.warn(f"{summary_line(len(self.dataset), self.row_errors.values())} (skipped; see "
                          "ActivationStream.row_errors)", stacklevel=3)


# ------------------------------------------------------------------------------------------ disk cache
_META = "cache.json"


class ActivationCache:
    """Activations on disk in safetensors shards (`activations [n, d]`, `is_image [n]`) + `cache.json`.

    As an `ActivationSource` it shuffles shard order per epoch and mixes `shards_in_memory` shards
    at a time, so memory stays at that many shards and resuming skips whole shards without reading them.
    """

    def __init__(self, path: str | Path, *, shards_in_memory: int = 4) -> None:
        self.path = Path(path)
        meta_file = self.path / _META
        if not meta_file.is_file():
            raise InputError(f"{self.path}: not a finished activation cache ({_META} missing); write one with "
                             "ActivationCache.write or `saev-curate cache-activations`")
        from saev_curate.io.checked import read_json_object

        fix = f"delete {self.path} and write the cache again (saev-curate cache-activations)"
        self.meta = read_json_object(meta_file, fix=fix)
        shards = self.meta.get("shards")
        try:
            self.d_in = int(self.meta["d_in"])
            ok = isinstance(shards, list) and all(isinstance(x, dict) and isinstance(x.get("file"), str)
                                                  and int(x["n"]) >= 0 for x in shards)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{meta_file}: not a valid activation-cache index (needs 'd_in' and a 'shards' list of "
                             "{file, n}); " + fix)
        missing = [x["file"] for x in shards if not (self.path / x["file"]).is_file()]
        if missing:
            raise InputError(f"{self.path}: shard files {missing[:3]} listed in {_META} are missing; {fix}")
        self.shards: list[dict[str, Any]] = shards
        self.shards_in_memory = max(1, shards_in_memory)

    @property
    def n_tokens(self) -> int:
        return sum(s["n"] for s in self.shards)

    @classmethod
    def write(cls, stream: ActivationStream, path: str | Path, *, shard_tokens: int = 65_536, epochs: int = 1,
              max_tokens: int | None = None, dtype: str = "float32", metadata: dict[str, Any] | None = None,
              progress: bool = True) -> "ActivationCache":
        """Run `stream` for `epochs` (or until `max_tokens`) and write its tokens, unmixed, in shards."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("shard_*.safetensors"):
            old.unlink()
        (path / _META).unlink(missing_ok=True)
        store = str_to_dtype(dtype)
        shards: list[dict[str, Any]] = []
        pending_v: list[torch.Tensor] = []
        pending_t: list[torch.Tensor] = []
        held = total = 0

        def flush(final: bool) -> None:
            nonlocal pending_v, pending_t, held
            while held >= shard_tokens or (final and held):
                v, t = torch.cat(pending_v), torch.cat(pending_t)
                name = f"shard_{len(shards):05d}.safetensors"
                take = min(shard_tokens, len(v))
                save_file({"activations": v[:take].to(store).contiguous(), "is_image": t[:take].contiguous()},
                          str(path / name))
                shards.append({"file": name, "n": take, "n_image": int(t[:take].sum())})
                pending_v, pending_t, held = [v[take:]], [t[take:]], len(v) - take

        bar = tqdm(desc="caching activations", unit="tok", disable=not progress, total=max_tokens)
        for epoch in range(epochs):
            for vectors, is_image in stream.chunks(epoch):
                if max_tokens is not None:
                    vectors, is_image = vectors[: max_tokens - total], is_image[: max_tokens - total]
                pending_v.append(vectors)
                pending_t.append(is_image)
                held += len(vectors)
                total += len(vectors)
                bar.update(len(vectors))
                flush(final=False)
                if max_tokens is not None and total >= max_tokens:
                    break
            if max_tokens is not None and total >= max_tokens:
                break
        flush(final=True)
        bar.close()
        if not shards:
            stream.check_rows()
            raise InputError("no activations were produced: the rows hold no image or text tokens")
        from saev_curate.core.row_errors import summary

        meta = {
            "row_error_summary": summary(len(stream.dataset), stream.row_errors.values()),
            "d_in": stream.d_in, "layer": stream.layer, "dtype": dtype_to_str(store), "stream": asdict(stream.cfg),
            "n_tokens": total, "n_image": sum(s["n_image"] for s in shards), "shards": shards,
            "rows": len(stream.dataset), "row_errors": {str(k): v for k, v in stream.row_errors.items()},
            **(metadata or {}),
        }
        tmp = path / (_META + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1, default=str))
        os.replace(tmp, path / _META)  # the cache counts as written only once this file exists
        return cls(path)

    def read_shard(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        file = self.path / self.shards[i]["file"]
        try:
            with safe_open(str(file), framework="pt") as f:
                return f.get_tensor("activations").float(), f.get_tensor("is_image")
        except Exception as exc:
            raise InputError(f"{file}: unreadable activation shard ({exc}); rewrite the cache") from None

    def all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every cached token at once (for small caches and evaluation)."""
        parts = [self.read_shard(i) for i in range(len(self.shards))]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def iter_batches(self, batch_size: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]:
        """Mixed batches forever. Each group of shards is shuffled on its own and its last partial
        batch (< batch_size tokens, a different one each epoch) is left out, so resuming skips whole
        groups without reading them."""
        step = 0
        for epoch in range(1_000_000):
            gen = torch.Generator().manual_seed(seed * 15_485_863 + epoch)
            order = torch.randperm(len(self.shards), generator=gen).tolist()
            produced = False
            for g in range(0, len(order), self.shards_in_memory):
                group = order[g : g + self.shards_in_memory]
                n_batches = sum(self.shards[i]["n"] for i in group) // batch_size
                perm_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
                produced |= n_batches > 0
                if step + n_batches <= start_step:
                    step += n_batches
                    continue
                pool = torch.cat([self.read_shard(i)[0] for i in group])
                pool = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(perm_seed))]
                for b in range(n_batches):
                    if step >= start_step:
                        yield pool[b * batch_size : (b + 1) * batch_size]
                    step += 1
            if not produced:
                raise InputError(f"{self.path}: no group of {self.shards_in_memory} shards holds batch_size="
                                 f"{batch_size} tokens; lower batch_size or raise shards_in_memory")
