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


def _token_chunks(model, processor, dataset, cfg: StreamConfig, epoch: int, errors: dict[int, str],
                  first: int = 0, stop: int | None = None):
    """One epoch of `(activations [n, d], is_image [n])`, one chunk per model batch, rows in a seeded order;
    `first`/`stop`: only positions `[first, stop)` of that order (a multiple of `model_batch_size` apart from the
    epoch's start, so the batches, and every chunk, are those of the whole epoch)."""
    from saev_curate.io.datasets import raw_rows
    from saev_curate.vlm.capture import capture_activations
    from saev_curate.vlm.layers import context_length
    from saev_curate.vlm.rows import prepare_batch

    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7_919 + epoch)).tolist()
    for start in range(first, n if stop is None else min(stop, n), cfg.model_batch_size):
        idx = order[start : start + cfg.model_batch_size]
        # the ratio cap's draw depends on this batch alone, so a shard of the epoch is cut as in the whole epoch
        gen = torch.Generator().manual_seed(cfg.seed * 104_729 + epoch * 1_000_003 + start)
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
_PLAN = "plan.json"  # the settings of a cache being written (resumed only with the same ones)
_FORMAT = "saev-curate/activation-cache"


def _shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


class ActivationCache:
    """Activations on disk in safetensors shards (`activations [n, d]`, `is_image [n]`) + `cache.json`.

    A shard holds the tokens of a fixed run of rows (`shard_rows`, whole model batches) of the stream's seeded
    row order, so shards can be written by several processes, in any order, and a rerun skips finished ones.
    As an `ActivationSource` it shuffles shard order per epoch and mixes shards in pools of about
    `pool_tokens` tokens, so memory stays at one pool and resuming skips whole pools without reading them.
    """

    def __init__(self, path: str | Path, *, pool_tokens: int = 262_144) -> None:
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
        self.pool_tokens = max(1, pool_tokens)

    @property
    def n_tokens(self) -> int:
        return sum(s["n"] for s in self.shards)

    @classmethod
    def write(cls, stream: ActivationStream, path: str | Path, *, shard_rows: int = 64, epochs: int = 1,
              max_tokens: int | None = None, dtype: str = "float32", metadata: dict[str, Any] | None = None,
              progress: bool = True) -> "ActivationCache":
        """Run `stream` for `epochs` (or until `max_tokens`) and write its tokens, unmixed, in shards of
        `shard_rows` rows (rounded up to whole model batches); the tokens in order are those of `stream.chunks`.

        Resumable: a shard file appears (atomically) only when complete, and the same call again skips the
        finished shards; a finished cache of the same settings is returned as it is, one of other settings
        is an error. Under ``torchrun`` / ``accelerate launch`` process p of n writes shards p, p+n, ... into
        the same folder (a filesystem every node sees), and the cache equals a one-process run's shard for
        shard. With `max_tokens`, shards count in order until the total reaches it; the last one is cut to fit.
        """
        from saev_curate.sae.training.distributed import process_group

        if shard_rows <= 0 or epochs <= 0 or (max_tokens is not None and max_tokens <= 0):
            raise InputError(f"ActivationCache.write: shard_rows={shard_rows}, epochs={epochs} and max_tokens="
                             f"{max_tokens} must be positive")
        with process_group(next(stream.model.parameters()).device) as procs:
            return _write_shards(stream, Path(path), procs, shard_rows=shard_rows, epochs=epochs,
                                 max_tokens=max_tokens, dtype=dtype, metadata=metadata or {}, progress=progress)

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

    def _pools(self, order: list[int]) -> Iterator[list[int]]:
        """Consecutive shards of `order`, grouped until a group holds `pool_tokens` tokens."""
        group: list[int] = []
        held = 0
        for i in order:
            group.append(i)
            held += self.shards[i]["n"]
            if held >= self.pool_tokens:
                yield group
                group, held = [], 0
        if group:
            yield group

    def iter_batches(self, batch_size: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]:
        """Mixed batches forever. Each pool of shards is shuffled on its own and its last partial
        batch (< batch_size tokens, a different one each epoch) is left out, so resuming skips whole
        pools without reading them."""
        step = 0
        for epoch in range(1_000_000):
            gen = torch.Generator().manual_seed(seed * 15_485_863 + epoch)
            order = torch.randperm(len(self.shards), generator=gen).tolist()
            produced = False
            for group in self._pools(order):
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
                raise InputError(f"{self.path}: no pool of {self.pool_tokens} tokens holds batch_size={batch_size} "
                                 "tokens; lower batch_size or raise pool_tokens")


def _write_shards(stream: ActivationStream, path: Path, procs, *, shard_rows: int, epochs: int,
                  max_tokens: int | None, dtype: str, metadata: dict[str, Any], progress: bool) -> ActivationCache:
    """`ActivationCache.write` in process `procs.rank` of `procs.world` (see there)."""
    from saev_curate.io.checked import read_json_object

    mb = stream.cfg.model_batch_size
    per_shard = -(-shard_rows // mb) * mb
    n_rows = len(stream.dataset)
    starts = [(epoch, a) for epoch in range(epochs) for a in range(0, n_rows, per_shard)]
    store = str_to_dtype(dtype)
    plan = json.loads(json.dumps({
        "format": _FORMAT, "d_in": stream.d_in, "layer": stream.layer, "dtype": dtype_to_str(store),
        "stream": asdict(stream.cfg), "rows": n_rows, "shard_rows": per_shard, "epochs": epochs,
        "max_tokens": max_tokens, "metadata": metadata}, default=str))
    fix = f"delete {path} to write it again, or write this cache to another folder"

    def changed(old: dict) -> str:
        if not old:
            return "no record of their settings: written by an earlier version"
        return ", ".join(k for k in plan if old.get(k) != plan[k]) + " changed"

    # every process decides from the same files before any of them writes, so all go on or all stop
    if (path / _META).is_file():
        old = read_json_object(path / _META, fix=fix).get("plan", {})
        if old == plan:
            return ActivationCache(path)
        raise InputError(f"{path} holds a finished activation cache of other settings ({changed(old)}); {fix}")
    if any(path.glob("shard_*.safetensors")):
        old = read_json_object(path / _PLAN, fix=fix) if (path / _PLAN).is_file() else {}
        if old != plan:
            raise InputError(f"{path} holds unfinished activation shards of other settings ({changed(old)}); "
                             f"{fix}")
    procs.barrier()
    if procs.main:
        path.mkdir(parents=True, exist_ok=True)
        _write_json(path / _PLAN, plan)
    procs.barrier()

    mine = range(procs.rank, len(starts), procs.world)
    bar = tqdm(total=len(mine), desc=f"caching activations (process {procs.rank + 1} of {procs.world})"
               if procs.world > 1 else "caching activations", unit="shard", disable=not (progress and procs.main))
    kept, total = len(starts), 0
    for first in range(0, len(starts), procs.world):
        s = first + procs.rank
        n = _shard(stream, path, s, starts[s], per_shard, store) if s < len(starts) else 0
        bar.update(s < len(starts))
        if max_tokens is None:
            continue
        for j, count in enumerate(procs.all_gather(n)[: len(starts) - first]):  # shards first, first+1, ... in order
            total += count
            if total >= max_tokens:
                kept = first + j + 1
                break
        if total >= max_tokens:
            break
    bar.close()
    procs.barrier()
    if procs.main and max_tokens is not None:
        for i in range(kept, len(starts)):
            (path / _shard_name(i)).unlink(missing_ok=True)
        if total > max_tokens:
            _cut_shard(path / _shard_name(kept - 1), total - max_tokens)
    procs.barrier()

    shards, errors = [], {}
    for i in range(kept):
        with safe_open(str(path / _shard_name(i)), framework="pt") as f:
            tags = f.get_tensor("is_image")
            errors.update({int(k): v for k, v in json.loads(f.metadata()["row_errors"]).items()})
        shards.append({"file": _shard_name(i), "n": len(tags), "n_image": int(tags.sum())})
    stream.row_errors.update(errors)
    n_tokens = sum(x["n"] for x in shards)
    if kept * per_shard >= n_rows or not n_tokens:  # every row seen (or nothing usable): the row rule
        stream.check_rows()
    if not n_tokens:
        raise InputError("no activations were produced: the rows hold no image or text tokens")
    if procs.main:
        stream._warn_errors()
    from saev_curate.core.row_errors import summary

    if procs.main:
        _write_json(path / _META, {
            "row_error_summary": summary(n_rows, errors.values()),
            "d_in": stream.d_in, "layer": stream.layer, "dtype": dtype_to_str(store), "stream": asdict(stream.cfg),
            "n_tokens": n_tokens, "n_image": sum(x["n_image"] for x in shards), "shards": shards,
            "rows": n_rows, "row_errors": {str(k): v for k, v in sorted(errors.items())}, "world_size": procs.world,
            "plan": plan, **metadata,
        })  # the cache counts as written only once this file exists; plan.json stays: the shards' settings
    procs.barrier()
    return ActivationCache(path)


def _shard(stream: ActivationStream, path: Path, i: int, start: tuple[int, int], rows: int, store) -> int:
    """Write shard `i` (rows `[a, a + rows)` of epoch `e`'s order, `start = (e, a)`) unless it exists; its tokens."""
    file = path / _shard_name(i)
    if file.is_file():
        with safe_open(str(file), framework="pt") as f:
            return f.get_slice("is_image").get_shape()[0]
    epoch, a = start
    errors: dict[int, str] = {}
    chunks = list(_token_chunks(stream.model, stream.processor, stream.dataset, stream.cfg, epoch, errors, a, a + rows))
    vectors = torch.cat([v for v, _ in chunks]) if chunks else torch.zeros(0, stream.d_in)
    tags = torch.cat([t for _, t in chunks]) if chunks else torch.zeros(0, dtype=torch.bool)
    _save_shard(file, vectors.to(store), tags, {"row_errors": json.dumps({str(k): v for k, v in errors.items()})})
    return len(tags)


def _cut_shard(file: Path, drop: int) -> None:
    """Drop the last `drop` tokens of a shard (the one where `max_tokens` is reached)."""
    with safe_open(str(file), framework="pt") as f:
        vectors, tags, meta = f.get_tensor("activations"), f.get_tensor("is_image"), f.metadata()
    _save_shard(file, vectors[: len(tags) - drop], tags[: len(tags) - drop], meta)


def _save_shard(file: Path, vectors: torch.Tensor, tags: torch.Tensor, meta: dict[str, str]) -> None:
    tmp = file.with_name(f".{file.name}.tmp{os.getpid()}")
    save_file({"activations": vectors.contiguous(), "is_image": tags.contiguous()}, str(tmp), metadata=meta)
    os.replace(tmp, file)  # atomic: a shard file exists only when complete


def _write_json(file: Path, obj: dict[str, Any]) -> None:
    tmp = file.with_name(f".{file.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, file)
