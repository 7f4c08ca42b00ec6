"""The cross-modal weights ω of an SAE (stages 1-2 of SAE-V): the result, its files, and fitting it on a
model and a dataset with the streaming :class:`~saev_curate.curation.crossmodal.fitter.CrossModalFitter`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor

from saev_curate.core.devices import module_device
from saev_curate.core.errors import InputError
from saev_curate.curation.agreement import answer_slot, content_mask, template_token_ids
from saev_curate.curation.capture import CapturedBatches, reference_indices
from saev_curate.curation.counting import DEFAULT_CAPACITY
from saev_curate.curation.crossmodal.fitter import (
    CLASS_NAMES,
    CrossModalFitter,
    TokenBatch,
    flatten_tokens,
    token_keys,
)
from saev_curate.curation.pairs import FeaturePairs, PairCounter
from saev_curate.curation.readout import AnswerReadout, ReadoutCounter
from saev_curate.io.fingerprint import model_identity, sae_fingerprint
from saev_curate.sae.chunks import encode_chunks, segment_maxima
from saev_curate.vlm.layers import resolve_sae_layer

__all__ = ["CrossModalWeights"]

#: the feature-pair tables beyond the paper (:mod:`saev_curate.curation.pairs`) and their files
PAIR_TABLES = {"pairs": "crossmodal_pairs.safetensors", "answer_pairs": "crossmodal_answer_pairs.safetensors"}
#: the read-outs' counts (:mod:`saev_curate.curation.readout`) and their files: the answer read-out (features at
#: the answer slot -> the response's tokens) and the token read-out (features at each response position -> the
#: token said next)
READOUT_TABLES = {"answer_readout": "crossmodal_answer_readout.safetensors",
                  "token_readout": "crossmodal_token_readout.safetensors"}
READOUT_TENSORS = ("vocab", "n_token", "n_slot", "keys", "counts")


@dataclass
class CrossModalWeights:
    """ω per feature (NaN = undefined), feature classes, and each feature's top-token record."""

    omega: Tensor  # [d_sae] float32, NaN where undefined
    classes: Tensor  # [d_sae] int8, index into CLASS_NAMES
    top_activation: Tensor | None = None  # [d_sae, K] float32 (-inf = empty)
    top_row: Tensor | None = None  # [d_sae, K] long: reference dataset row (-1 = empty)
    top_position: Tensor | None = None  # [d_sae, K] long: position in the row's unpadded sequence
    top_is_image: Tensor | None = None  # [d_sae, K] bool
    meta: dict[str, Any] = field(default_factory=dict)
    #: beyond the paper (:mod:`saev_curate.curation.pairs`, :mod:`saev_curate.curation.agreement`): npmi of
    #: (content-token feature, image feature) pairs, and of (chosen-response feature, answer-slot feature)
    #: pairs (None when the reference rows had no responses)
    pairs: FeaturePairs | None = None
    answer_pairs: FeaturePairs | None = None
    #: (answer-slot feature, response token) counts and (feature at a response position, the next token) counts
    #: (:mod:`saev_curate.curation.readout`; None without responses)
    answer_readout: AnswerReadout | None = None
    token_readout: AnswerReadout | None = None

    # -------------------------------------------------------------- views
    @property
    def d_sae(self) -> int:
        return int(self.omega.shape[0])

    @property
    def defined(self) -> Tensor:
        return ~torch.isnan(self.omega)

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.classes.long(), minlength=len(CLASS_NAMES)).tolist()
        return dict(zip(CLASS_NAMES, counts))

    def class_of(self, feature: int) -> str:
        return CLASS_NAMES[int(self.classes[feature])]

    def top_tokens(self, feature: int) -> list[dict[str, Any]]:
        """Feature ``feature``'s recorded top tokens, best first: reference row, position in the
        unpadded row, activation, modality."""
        if self.top_row is None:
            return []
        out = []
        for r, p, a, im in zip(self.top_row[feature].tolist(), self.top_position[feature].tolist(),
                               self.top_activation[feature].tolist(), self.top_is_image[feature].tolist()):
            if r >= 0:
                out.append({"row": r, "position": p, "activation": a, "modality": "image" if im else "text"})
        return out

    def summary(self) -> dict[str, Any]:
        w = self.omega[self.defined]
        out: dict[str, Any] = {"d_sae": self.d_sae, "classes": self.class_counts(), "n_defined": int(w.numel())}
        if w.numel():
            out.update(omega_min=float(w.min()), omega_mean=float(w.mean()), omega_max=float(w.max()))
        for name in PAIR_TABLES:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).summary()
        for name in READOUT_TABLES:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).summary()
        return out

    def fingerprint(self) -> str:
        """Content hash of ω, the classes and the fit parameters (stable across save/load)."""
        h = hashlib.sha256()
        h.update(self.omega.float().contiguous().numpy().tobytes())
        h.update(self.classes.to(torch.int8).contiguous().numpy().tobytes())
        h.update(json.dumps(self.meta, sort_keys=True, default=str).encode())
        for name in PAIR_TABLES:
            p = getattr(self, name)
            if p is not None:
                for t in (p.keys, p.npmi, p.n_text, p.n_image):
                    h.update(t.contiguous().numpy().tobytes())
                h.update(json.dumps(p.summary(), sort_keys=True).encode())
        for table in READOUT_TABLES:
            if (r := getattr(self, table)) is not None:
                for name in READOUT_TENSORS:
                    h.update(getattr(r, name).contiguous().numpy().tobytes())
                h.update(json.dumps(r.summary(), sort_keys=True).encode())
        return h.hexdigest()[:32]

    def __repr__(self) -> str:
        return f"CrossModalWeights({self.summary()})"

    # -------------------------------------------------------------- io
    def save(self, path: str | Path) -> Path:
        """Write ``crossmodal_weights.safetensors`` + ``crossmodal_weights.json`` into folder ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"omega": self.omega.float().contiguous(), "classes": self.classes.to(torch.int8).contiguous()}
        for name in ("top_activation", "top_row", "top_position", "top_is_image"):
            t = getattr(self, name)
            if t is not None:
                tensors[name] = t.contiguous()
        if "top_is_image" in tensors:
            tensors["top_is_image"] = tensors["top_is_image"].to(torch.uint8)
        save_file(tensors, str(path / "crossmodal_weights.safetensors"))
        doc = {"format": "saev-curate/crossmodal-weights", "version": 1, "class_names": list(CLASS_NAMES),
               "summary": self.summary(), "meta": self.meta}
        for name, file in PAIR_TABLES.items():
            p = getattr(self, name)
            if p is not None:
                save_file({"keys": p.keys.contiguous(), "npmi": p.npmi.contiguous(), "n_text": p.n_text.contiguous(),
                           "n_image": p.n_image.contiguous()}, str(path / file))
            elif (path / file).exists():
                (path / file).unlink()
            doc[name] = None if p is None else {"n_rows": p.n_rows, "delta": p.delta, "min_count": p.min_count,
                                                "max_undercount": p.max_undercount}
        for table, file in READOUT_TABLES.items():
            r = getattr(self, table)
            if r is not None:
                save_file({name: getattr(r, name).contiguous() for name in READOUT_TENSORS}, str(path / file))
            elif (path / file).exists():
                (path / file).unlink()
            doc[table] = None if r is None else {"n_rows": r.n_rows, "delta": r.delta, "alpha": r.alpha,
                                                 "max_undercount": r.max_undercount}
        (path / "crossmodal_weights.json").write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CrossModalWeights":
        path = Path(path)
        st, js = path / "crossmodal_weights.safetensors", path / "crossmodal_weights.json"
        if not st.is_file() or not js.is_file():
            raise InputError(
                f"{path} is not a cross-modal weights folder: expected crossmodal_weights.safetensors and "
                "crossmodal_weights.json (written by CrossModalWeights.save)")
        from saev_curate.io.checked import check_tensors, read_json_object, read_safetensors

        redo = "refit the weights (saev-curate fit-weights) or restore the folder"
        t = read_safetensors(st, fix=redo)
        doc = read_json_object(js, fix=redo)
        if doc.get("format", "saev-curate/crossmodal-weights") != "saev-curate/crossmodal-weights":
            raise InputError(f"{js}: format {doc.get('format')!r} is not saev-curate/crossmodal-weights; {redo}")
        if list(doc.get("class_names", CLASS_NAMES)) != list(CLASS_NAMES):
            raise InputError(f"{js}: unknown feature class names {doc.get('class_names')}")
        if not isinstance(doc.get("meta", {}), dict):
            raise InputError(f"{js}: 'meta' must be a JSON object, found {type(doc['meta']).__name__}; {redo}")
        check_tensors(st, t, required={"omega": 1, "classes": 1},
                      optional={"top_activation": 2, "top_row": 2, "top_position": 2, "top_is_image": 2},
                      same_first_dim=True, finite=("top_row", "top_position"), fix=redo)
        if t["classes"].numel() and (int(t["classes"].min()) < 0 or int(t["classes"].max()) >= len(CLASS_NAMES)):
            raise InputError(f"{st}: tensor 'classes' holds values outside 0..{len(CLASS_NAMES) - 1}; {redo}")
        if bool(torch.isinf(t["omega"]).any()):
            raise InputError(f"{st}: tensor 'omega' holds infinite values (NaN marks an undefined feature); {redo}")
        top_img = t.get("top_is_image")
        tables: dict[str, FeaturePairs] = {}
        for name, file in PAIR_TABLES.items():
            if not isinstance(doc.get(name), dict):
                continue
            pf = path / file
            pt = read_safetensors(pf, fix=redo)
            check_tensors(pf, pt, required={"keys": 1, "npmi": 1, "n_text": 1, "n_image": 1}, optional={},
                          same_first_dim=False, finite=("npmi", "n_text", "n_image"), fix=redo)
            d = int(t["omega"].shape[0])
            if pt["keys"].shape != pt["npmi"].shape or pt["n_text"].shape[0] != d or pt["n_image"].shape[0] != d:
                raise InputError(f"{pf}: pair tensors do not match each other or the {d} features of omega; {redo}")
            pd = doc[name]
            tables[name] = FeaturePairs(keys=pt["keys"].long(), npmi=pt["npmi"].float(), n_text=pt["n_text"].float(),
                                        n_image=pt["n_image"].float(), n_rows=int(pd.get("n_rows", 0)),
                                        delta=float(pd.get("delta", 0.0)), min_count=int(pd.get("min_count", 1)),
                                        max_undercount=int(pd.get("max_undercount", 0)))
        readouts: dict[str, AnswerReadout] = {}
        for table, file in READOUT_TABLES.items():
            if not isinstance(rd := doc.get(table), dict):
                continue
            rf = path / file
            rt = read_safetensors(rf, fix=redo)
            check_tensors(rf, rt, required=dict.fromkeys(READOUT_TENSORS, 1), optional={}, same_first_dim=False,
                          finite=("n_token", "n_slot", "counts"), fix=redo)
            d = int(t["omega"].shape[0])
            n_vocab = len(rt["vocab"])
            if (rt["keys"].shape != rt["counts"].shape or rt["n_token"].shape[0] != n_vocab
                    or rt["n_slot"].shape[0] != d
                    or (len(rt["keys"]) and (int(rt["keys"].min()) < 0 or int(rt["keys"].max()) >= d * n_vocab))):
                raise InputError(f"{rf}: read-out tensors do not match each other or the {d} features of omega; {redo}")
            readouts[table] = AnswerReadout(vocab=rt["vocab"].long(), n_token=rt["n_token"].float(),
                                            n_slot=rt["n_slot"].float(), keys=rt["keys"].long(),
                                            counts=rt["counts"].float(), n_rows=int(rd.get("n_rows", 0)), d_sae=d,
                                            delta=float(rd.get("delta", 1.0)), alpha=float(rd.get("alpha", 1.0)),
                                            max_undercount=int(rd.get("max_undercount", 0)))
        return cls(omega=t["omega"], classes=t["classes"], top_activation=t.get("top_activation"),
                   top_row=t.get("top_row"), top_position=t.get("top_position"),
                   top_is_image=None if top_img is None else top_img.bool(), meta=doc.get("meta", {}),
                   **readouts, **tables)

    # -------------------------------------------------------------- checks
    def check_sae(self, sae) -> None:
        """Raise if these weights were not fitted for an SAE of this shape (or, when known, this SAE)."""
        d_sae = int(sae.cfg.d_sae)
        if d_sae != self.d_sae:
            raise InputError(f"cross-modal weights have {self.d_sae} features but the SAE has d_sae={d_sae}: "
                             "fit the weights with this SAE")
        fitted = self.meta.get("sae_fingerprint")
        if fitted and fitted != sae_fingerprint(sae):
            raise InputError("these cross-modal weights were fitted with a different SAE (weights differ); refit them "
                             "for this SAE: saev-curate fit-weights --model <model> --sae <this SAE> --data "
                             "<reference rows> --out <new weights folder> (in Python: CrossModalWeights.fit)")
        if self.d_sae and not bool(self.defined.any()):
            raise InputError("these cross-modal weights define omega for no feature (every score would be 0): they "
                             f"were fitted on rows that gave no cross-modal tokens ({self.meta.get('n_rows_skipped', '?')}"
                             f" of {self.meta.get('n_rows_sampled', '?')} reference rows failed); refit them on "
                             "usable reference rows: saev-curate fit-weights")

    # -------------------------------------------------------------- fitting on a model
    @classmethod
    def fit_activations(cls, batches: Iterable[dict[str, Any]], sae, *, top_features_per_token: int = 50,
                        top_tokens_per_feature: int = 30, tokens_per_modality: int = 5,
                        min_activation: float = 0.0, meta: dict | None = None,
                        pairs: PairCounter | None = None, template_ids: set[int] | None = None,
                        prompt_lens: dict[int, int] | None = None) -> "CrossModalWeights":
        """Fit from a re-iterable of captured batches (pure; used by the tests and by :meth:`fit`).

        Each batch is a dict with ``resid [B,T,d]``, ``image_mask``, ``text_mask``, ``attention_mask``
        and ``row_ids`` (list of B dataset row ids, strictly increasing over the stream: tokens are
        ordered by (row id, position) for ties).  ``batches`` is iterated twice; when it has
        ``iter_rows_subset(rows)``, pass 2 uses that to run only batches holding a selected token.
        With ``pairs`` (a :class:`PairCounter`) and ``template_ids``, pass 1 also counts feature pairs
        (batches then need ``input_ids``) and the result carries them; ``prompt_lens`` receives each row's
        real token count.
        """
        fitter = CrossModalFitter(int(sae.cfg.d_sae), top_features_per_token=top_features_per_token,
                                  top_tokens_per_feature=top_tokens_per_feature,
                                  tokens_per_modality=tokens_per_modality, min_activation=min_activation,
                                  device=module_device(sae))
        last_row = -1
        for b in batches:
            ids = list(b["row_ids"])
            if ids and (min(ids) <= last_row or ids != sorted(ids)):
                raise InputError("fit_activations: row_ids must increase strictly across batches "
                                 "(they order tokens for the deterministic tie rule)")
            last_row = max(ids, default=last_row)
            _observe_batch(fitter, sae, b, pairs, template_ids or set(), prompt_lens)
        needed = fitter.needed_rows
        second = batches.iter_rows_subset(needed) if hasattr(batches, "iter_rows_subset") else batches
        for b in second:
            _accumulate_batch(fitter, b)
        out = cls(**fitter.result({"sae_fingerprint": sae_fingerprint(sae), **(meta or {})}))
        out.pairs = None if pairs is None else pairs.result()
        return out

    @classmethod
    def fit(cls, model, processor, sae, dataset, layer: int | str | None = None, *, n_reference: int | None = 1000,
            seed: int = 42, batch_size: int = 8, top_features_per_token: int = 50,
            top_tokens_per_feature: int = 30, tokens_per_modality: int = 5, min_activation: float = 0.0,
            max_length: int | None = None, exclude_special_tokens: bool = False, progress: bool = False,
            min_usable_share: float | None = None, pairs: bool = True, pair_delta: float = 0.0,
            pair_min_count: int = 5, readout_delta: float = 1.0, readout_alpha: float = 1.0,
            pair_capacity: int | None = DEFAULT_CAPACITY) -> "CrossModalWeights":
        """Fit ω on ``n_reference`` rows of ``dataset`` sampled with ``seed`` (all rows if None or more).

        Rows are fed as image + prompt only (``prepare_batch(mode="prompt")``).  Rows the processor
        cannot prepare are skipped and counted in ``meta["n_rows_skipped"]`` (and by reason in
        ``meta["row_errors"]``); when no row, or fewer than ``min_usable_share`` (default
        :data:`~saev_curate.core.row_errors.DEFAULT_MIN_USABLE_SHARE`) of them, could be used the fit fails with
        :class:`~saev_curate.core.row_errors.TooFewUsableRows` naming the most common row errors.  Two passes
        over the sampled rows (the second only over rows holding a selected token).  ``pairs=True`` also
        counts (content-token feature, image feature) pairs in pass 1 (:mod:`saev_curate.curation.pairs`; a
        feature "fires" above ``pair_delta``, counts from ``pair_min_count`` rows on are trusted) and, when
        the rows are preference rows, (chosen-response feature, answer-slot feature) pairs and the answer
        read-out's (answer-slot feature > ``readout_delta``, response token) counts and the token read-out's
        (feature > ``readout_delta`` at a response position, the token said next) counts in a third pass over the
        rows shown with their chosen response (:mod:`saev_curate.curation.readout`; ``readout_alpha`` smooths).
        ``pair_capacity`` caps the distinct pairs each of these tables keeps (:mod:`saev_curate.curation.counting`:
        exact below it, a lossy count with a stated worst undercount beyond; None: never capped).  Every token
        is encoded once per pass, in chunks of bounded size (:mod:`saev_curate.sae.chunks`).
        """
        from saev_curate.core.row_errors import check_usable

        layer_index = resolve_sae_layer(model, sae, layer)
        indices = reference_indices(dataset, n_reference, seed)
        source = CapturedBatches(model, processor, dataset, indices, layer_index, batch_size=batch_size,
                                  max_length=max_length, exclude_special_tokens=exclude_special_tokens,
                                  progress=progress)
        meta = {
            "layer": layer_index,
            "model": model_identity(model),
            "sae": {"d_in": int(sae.cfg.d_in), "d_sae": int(sae.cfg.d_sae),
                    "hook_name": getattr(sae.cfg, "hook_name", None),
                    "model_name": getattr(sae.cfg, "model_name", None)},
            "n_reference_requested": n_reference, "seed": seed, "n_rows_sampled": len(indices),
            "batch_size": batch_size, "max_length": max_length, "exclude_special_tokens": exclude_special_tokens,
        }
        if not indices:
            raise InputError("the reference dataset has no rows; fit the weights on at least a few hundred rows "
                             "with images and text")
        counter = ((lambda: PairCounter(int(sae.cfg.d_sae), delta=pair_delta, min_count=pair_min_count,
                                        capacity=pair_capacity)) if pairs else None)
        template_ids = template_token_ids(processor) if pairs else None
        prompt_lens: dict[int, int] = {}
        try:
            out = cls.fit_activations(
                source, sae, top_features_per_token=top_features_per_token, top_tokens_per_feature=top_tokens_per_feature,
                tokens_per_modality=tokens_per_modality, min_activation=min_activation, meta=meta,
                pairs=counter() if counter else None, template_ids=template_ids, prompt_lens=prompt_lens)
        except Exception:
            if source.errors:  # the row errors explain the failure better, when they are the cause
                check_usable(len(indices), source.errors, min_usable_share=min_usable_share, what="reference rows",
                             action="fit-weights", report=False)
            raise
        out.meta["row_errors"] = check_usable(len(indices), source.errors, min_usable_share=min_usable_share,
                                              what="reference rows", action="fit-weights")
        out.meta["n_rows_skipped"] = source.n_skipped
        out.meta["skipped_examples"] = source.skipped_examples
        if counter is not None and _has_responses(dataset, indices):
            answers = counter()
            readout, per_token = (ReadoutCounter(int(sae.cfg.d_sae), delta=readout_delta, alpha=readout_alpha,
                                                 capacity=pair_capacity) for _ in range(2))
            for b in CapturedBatches(model, processor, dataset, indices, layer_index, batch_size=batch_size,
                                     max_length=max_length, exclude_special_tokens=exclude_special_tokens,
                                     progress=progress, mode="chosen"):
                _count_answers(answers, readout, per_token, sae, b, template_ids, prompt_lens)
            out.answer_pairs, out.answer_readout, out.token_readout = (answers.result(), readout.result(),
                                                                       per_token.result())
        return out


# ---------------------------------------------------------------------------------------------
# Feeding captured batches to the fitter

FIT_CHUNK = 4096  # at most this many tokens per encoded chunk (fewer at a large d_sae: sae.chunks' budget)


def _batch_tokens(b: dict[str, Any]) -> tuple[TokenBatch, Tensor, Tensor]:
    tb = flatten_tokens(b["resid"], b["image_mask"], b["text_mask"], b.get("attention_mask"))
    row_ids = torch.as_tensor(list(b["row_ids"]), dtype=torch.long)[tb.row.cpu()]
    keys = token_keys(row_ids, tb.position.cpu())
    return tb, keys, row_ids


def _observe_batch(fitter: CrossModalFitter, sae, b: dict[str, Any], pairs: PairCounter | None = None,
                   template_ids: set[int] | None = None, prompt_lens: dict[int, int] | None = None) -> None:
    """Pass 1 on one batch: every token encoded once (in bounded chunks) feeds the fitter and, with ``pairs``,
    the per-row maxima over content tokens and over image tokens that the pair counter takes."""
    tb, keys, row_ids = _batch_tokens(b)

    def feed(s: int, z: Tensor) -> None:
        n = z.shape[0]
        fitter.observe(z, tb.is_image[s:s + n], keys[s:s + n], row_ids[s:s + n])

    if pairs is None:
        for s, z in encode_chunks(sae, tb.resid, max_tokens=FIT_CHUNK):
            feed(s, z)
        return
    if "input_ids" not in b:
        raise InputError("counting feature pairs needs input_ids in every captured batch")
    am = b.get("attention_mask")
    am = torch.ones_like(b["input_ids"]) if am is None else am
    content = content_mask(b["input_ids"], b["image_mask"], b["text_mask"], template_ids or set(), am)
    rows, cols = (b["image_mask"].bool() | b["text_mask"].bool()).nonzero(as_tuple=True)  # flatten_tokens' order
    n_rows = int(b["resid"].shape[0])
    # row j: content tokens -> segment 2j, image tokens -> 2j + 1, other text -> 2 n_rows (not used)
    segment = torch.where(tb.is_image, 2 * tb.row + 1,
                          torch.where(content[rows, cols].to(tb.row.device), 2 * tb.row, torch.full_like(tb.row, 2 * n_rows)))
    maxima, _, tokens = segment_maxima(sae, tb.resid, segment, 2 * n_rows + 1, max_tokens=FIT_CHUNK, each=feed)
    for j in range(n_rows):
        if prompt_lens is not None:
            prompt_lens[int(b["row_ids"][j])] = int(am[j].sum())
        if tokens[2 * j] > 0 and tokens[2 * j + 1] > 0:
            pairs.observe(maxima[2 * j], maxima[2 * j + 1])


def _has_responses(dataset, indices: list[int]) -> bool:
    """Whether the reference rows are preference rows (the first sampled row has a chosen response)."""
    from saev_curate.curation.capture import iter_rows

    for _, row in iter_rows(dataset, indices[:1]):
        return isinstance(row, dict) and row.get("chosen") is not None
    return False


@torch.no_grad()
def _count_answers(counter: PairCounter, readout: ReadoutCounter, per_token: ReadoutCounter, sae, b: dict[str, Any],
                   template_ids: set[int], prompt_lens: dict[int, int]) -> None:
    """(response-token feature, answer-slot feature) pairs, (answer-slot feature, response token) counts and
    (feature at the position before a response token, that token) counts of a batch of rows shown with their
    chosen response."""
    known = [j for j, r in enumerate(b["row_ids"]) if int(r) in prompt_lens]
    if not known:
        return
    am = b.get("attention_mask")
    am = torch.ones_like(b["input_ids"]) if am is None else am
    plen = torch.tensor([prompt_lens.get(int(r), 1 << 30) for r in b["row_ids"]])
    response = content_mask(b["input_ids"], b["image_mask"], b["text_mask"], template_ids, am, plen)
    slot = answer_slot(am, plen)
    rows = [j for j in known if bool(response[j].any()) and bool(b["image_mask"][j].any())]  # as the scorer
    if not rows:
        return
    # one encode of every needed token of the batch (slots, response tokens, the tokens before them): an encode
    # reads all of W_enc, so per-row calls would cost a weight read each
    positions = [response[j].nonzero().flatten().cpu() for j in rows]
    counts = [len(p) for p in positions]
    n_rows, n_resp = len(rows), sum(counts)
    owner = torch.repeat_interleave(torch.tensor(rows), torch.tensor(counts))
    where = torch.cat(positions)
    resid = b["resid"]
    x = torch.cat([resid[torch.tensor(rows), slot.cpu()[rows]], resid[owner, where], resid[owner, where - 1]])
    segment = torch.cat([torch.full((n_rows,), n_rows), torch.repeat_interleave(torch.arange(n_rows), torch.tensor(counts)),
                         torch.full((n_resp,), n_rows)])  # response tokens: their row's segment; the rest a spare one
    ids = torch.cat([b["input_ids"][j][response[j]].cpu() for j in rows])
    slot_z = torch.zeros(n_rows, int(sae.cfg.d_sae), device=module_device(sae))

    def each(start: int, z: Tensor) -> None:
        end = start + z.shape[0]
        if start < n_rows:
            slot_z[start:min(end, n_rows)] = z[:min(end, n_rows) - start]
        first = max(start, n_rows + n_resp)  # the features before each response token, that token
        if first < end:
            per_token.observe_each(z[first - start:], ids[first - n_rows - n_resp:end - n_rows - n_resp])

    maxima, _, _ = segment_maxima(sae, x, segment, n_rows + 1, each=each)
    offsets = [0, *torch.tensor(counts).cumsum(0).tolist()]
    for r in range(n_rows):
        counter.observe(maxima[r], slot_z[r])
        readout.observe(slot_z[r], ids[offsets[r]:offsets[r + 1]])


def _accumulate_batch(fitter: CrossModalFitter, b: dict[str, Any]) -> None:
    tb, keys, _ = _batch_tokens(b)
    fitter.accumulate(tb.resid, keys)
