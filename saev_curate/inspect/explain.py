"""Why one row scores what it scores, as data: :func:`explain` returns what the site's row page shows.

A :class:`RowExplanation` holds

* the row's score in every recommended column of the methods table (:data:`~saev_curate.curation.methods.RECOMMENDED`
  and :data:`~saev_curate.curation.methods.RECOMMENDED_SAEV`, those its data shape gives) and which way is cleaner;
* the features that drove the paper's score: every co-occurring feature with its ω (the score is their sum;
  :meth:`SaevScorer.explain <saev_curate.curation.scorers.saev.SaevScorer.explain>`), strongest |ω| first;
* each shown feature's activation on every token of the row (image tokens in sequence order, which
  :func:`~saev_curate.vlm.geometry.image_token_boxes` maps to pixel boxes: :meth:`RowExplanation.heatmap`);
* the token the token read-out blames (its index among the chosen response's tokens, its text, the words the data
  know to be false when it has ``defect_words``) and the read-out's votes there
  (:meth:`~saev_curate.curation.readout.AnswerReadout.votes`: each feature firing before the token, for or against it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saev_curate.core.errors import InputError

__all__ = ["LABEL_COLUMNS", "RowExplanation", "explain", "load_parts", "recommended_methods"]

#: columns a row may carry that say what it is (the testbed's and a planted check's labels); shown, never scored
LABEL_COLUMNS = ("defect", "task", "qtype", "image_kind", "check_kind")


def recommended_methods(columns) -> list[str]:
    """The recommended methods of the table (overall and among SAE-V) that rows with ``columns`` give, in table
    order, without the ones that need another model (CLIP)."""
    from saev_curate.curation.methods import METHODS, RECOMMENDED, RECOMMENDED_SAEV, data_shape, methods_for

    shape = data_shape(columns)
    wanted = {RECOMMENDED[shape], RECOMMENDED_SAEV[shape]}
    allowed = set(methods_for(shape))
    return [m for m in METHODS if m in wanted and m in allowed and "clip" not in METHODS[m].needs]


@dataclass
class RowExplanation:
    """What the row page shows (see the module docstring); :meth:`to_dict` gives it as plain data."""

    index: int | None
    scores: dict[str, float | None]  # method -> its column's value
    higher_is_cleaner: dict[str, bool]
    contributions: list[dict[str, Any]]  # feature, omega, class, text_max, image_max
    tokens: list[str]  # the shown sequence's tokens (image tokens included)
    is_image: list[bool]
    response_start: int | None  # position of the chosen response's first token (None: no response shown)
    values: dict[int, list[float]]  # feature -> its activation at every token of ``tokens``
    boxes: list[Any]  # one PatchBox (or None) per image token, sequence order
    image_sizes: list[tuple[int, int]]
    #: what the data themselves say about the row (label columns such as the testbed's ``defect``, ``task``)
    labels: dict[str, Any] = field(default_factory=dict)
    blame: dict[str, Any] | None = None
    votes: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def image_values(self, feature: int) -> list[float]:
        """``feature``'s activation on each image token, in sequence order (the order of :attr:`boxes`)."""
        return [v for v, im in zip(self.values[feature], self.is_image) if im]

    def heatmap(self, feature: int, image: int = 0) -> np.ndarray:
        """``[H, W]`` map of ``feature`` over image ``image`` of the row (NaN where no token covers)."""
        from saev_curate.vlm.geometry import heatmap

        return heatmap(self.image_values(feature), self.boxes, self.image_sizes[image], image=image)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["boxes"] = [None if b is None else {"image": b.image, "box": list(b.box)} for b in self.boxes]
        d["values"] = {str(k): v for k, v in self.values.items()}
        return d


def load_parts(model, processor, sae, weights, *, need_weights: bool = True):
    """``(model, processor, sae, weights)`` with each given as an object or a folder loaded (a model folder brings
    its processor); an SAE, and weights when ``need_weights``, must be given."""
    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.sae.io import load_sae
    from saev_curate.vlm.load import load_vlm

    if isinstance(model, (str, Path)):
        model, loaded = load_vlm(str(model))
        processor = processor or loaded
    if processor is None:
        raise InputError("model=<an object> needs processor= (or give the model's folder)")
    if isinstance(sae, (str, Path)):
        sae = load_sae(str(sae))
    if isinstance(weights, (str, Path)):
        weights = CrossModalWeights.load(str(weights))
    if sae is None or (need_weights and weights is None):
        raise InputError("give an SAE and its cross-modal weights (sae=, weights=: objects or folders)")
    return model, processor, sae, weights


def row_images(row: dict) -> list:
    """The row's images as RGB PIL images, in order."""
    from saev_curate.vlm.rows import load_image

    imgs = row.get("images") if row.get("images") is not None else [row.get("image")]
    return [load_image(im) for im in imgs if im is not None]


@torch.no_grad()
def explain(row: dict, model, processor=None, sae=None, weights=None, *, index: int | None = None,
            top: int = 8, config=None) -> RowExplanation:
    """What the row page of ``row`` shows, as data (a :class:`RowExplanation`).

    ``model``, ``sae``, ``weights``: objects or folders (``processor`` is loaded with a model folder); ``top``: the
    number of contributing features shown (by |ω|) besides the read-out's blamed features; ``config``: a
    :class:`~saev_curate.curation.config.ScoreConfig` (δ, max length, ...); ``index``: the row's index in its
    dataset, kept for the page's title."""
    from saev_curate.curation.config import ScoreConfig
    from saev_curate.curation.methods import METHODS
    from saev_curate.curation.scorers import MethodScorer, SaevScorer
    from saev_curate.inspect.text import token_strings
    from saev_curate.vlm.capture import capture_activations
    from saev_curate.vlm.geometry import image_token_boxes
    from saev_curate.vlm.layers import context_length, resolve_sae_layer
    from saev_curate.vlm.rows import prepare_batch

    model, processor, sae, weights = load_parts(model, processor, sae, weights)
    config = config if config is not None else ScoreConfig()
    methods = recommended_methods(list(row))
    scored = MethodScorer(model, processor, sae, weights, methods=methods, config=config)([row])
    scores = {m: scored[METHODS[m].column][0] for m in methods}
    directions = {m: METHODS[m].higher_is_cleaner for m in methods}
    saev = SaevScorer(model, processor, sae, weights, config=config)
    try:
        contributions = saev.explain(row, top=None)
    except InputError as e:
        return RowExplanation(index, scores, directions, [], [], [], None, {}, [], [], error=str(e))
    contributions.sort(key=lambda c: (-abs(c["omega"]) if c["omega"] is not None else math.inf, c["feature"]))
    contributions = contributions[:top]

    responses = "chosen" in row or "messages" in row or "completion" in row
    mode = "chosen" if responses else "prompt"
    prep = prepare_batch(processor, [row], mode=mode, on_error="raise", max_context=context_length(model),
                         max_length=config.score_max_length)
    layer = resolve_sae_layer(model, sae, config.layer_value)
    acts = capture_activations(model, prep, layer, processor=processor)
    real = acts.attention_mask[0].bool()
    ids = acts.input_ids[0][real]
    z = sae.encode(acts.resid[0][real].to(sae.W_dec.device)).float().cpu()
    is_image = acts.image_mask[0][real].cpu()
    tok = getattr(processor, "tokenizer", processor)
    images = row_images(row)
    sizes = [im.size for im in images]
    boxes = image_token_boxes(model, processor, prep.inputs, 0, sizes)

    response_start = None
    blame, votes = None, []
    if responses:
        prompt = prepare_batch(processor, [row], mode="prompt", on_error="raise", max_length=config.score_max_length)
        response_start = int(prompt.inputs["attention_mask"][0].sum())
        b = scored.get("saev_blame_token", [None])[0]
        if b is not None and response_start + int(b) < len(ids) and weights.token_readout is not None:
            at = response_start + int(b)
            token_id = int(ids[at])
            votes = weights.token_readout.votes(z[at - 1], token_id)
            words = row.get("defect_words") or []
            blame = {"token": int(b), "position": at, "text": tok.decode([token_id]).strip(),
                     "features": scored.get("saev_blame_features", [None])[0],
                     "defect_words": list(words), "on_a_defect_word": int(b) in set(words) if words else None}
    shown = [c["feature"] for c in contributions]
    shown += [v["feature"] for v in votes[:4] if v["feature"] not in shown]
    values = {k: z[:, k].tolist() for k in shown}
    return RowExplanation(index=index, scores=scores, higher_is_cleaner=directions, contributions=contributions,
                          tokens=token_strings(tok, ids.tolist()), is_image=is_image.tolist(),
                          response_start=response_start, values=values, boxes=list(boxes), image_sizes=sizes,
                          labels={k: row[k] for k in LABEL_COLUMNS if row.get(k) is not None}, blame=blame,
                          votes=votes[:12])
