"""One streaming pass over a dataset: every row through the model and the SAE into
:class:`~saev_curate.inspect.features.FeatureStats`, plus each row's score in the column the site ranks rows by.

The ranking column comes, cheapest first, from the data (a column the rows already carry, e.g. from ``saev-curate
score``), from this pass itself (the SAE-V agreement columns of the mode the rows are shown in, computed by the
scorer's own :func:`~saev_curate.curation.agreement.batch_agreement`), or from a
:class:`~saev_curate.curation.scorers.MethodScorer` run on the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saev_curate.core.errors import InputError
from saev_curate.inspect.features import FeatureStats
from saev_curate.inspect.labels import row_concepts

__all__ = ["Collected", "collect", "default_rank_by", "shown_mode"]

#: mode -> {method: the agreement column of that mode that is the method's column}
PASS_COLUMNS = {"chosen": {"saev_token_readout_min_chosen": "token_readout_min",
                           "saev_answer_readout_chosen": "answer_readout",
                           "saev_answer_agreement_min_chosen": "answer_agreement_min"},
                "prompt": {"saev_pair_agreement": "pair_agreement", "saev_score_content": "score_content",
                           "saev_grounding": "grounding"}}


@dataclass
class Collected:
    """What the pass gives: the statistics, the ranking (``scores[i]``: row ``i``'s value, None = no score; ``by``
    the method, ``higher_is_cleaner`` its direction), each row's error, and the mode rows were shown in."""

    stats: FeatureStats
    by: str
    higher_is_cleaner: bool
    scores: list[float | None]
    errors: list[str | None]
    mode: str
    layer: int


def shown_mode(columns) -> str:
    """``chosen`` (prompt + the chosen response: what a person reads) when rows have a response, else ``prompt``."""
    from saev_curate.curation.methods import data_shape

    return "prompt" if data_shape(columns) == "prompt_only" else "chosen"


def default_rank_by(columns) -> str:
    """The SAE-V method the table recommends for rows with ``columns`` (:data:`RECOMMENDED_SAEV`), when this pass
    computes it; else the first method this pass computes in the rows' mode."""
    from saev_curate.curation.methods import default_by

    by = default_by(columns, saev_only=True)
    mode = shown_mode(columns)
    return by if by in PASS_COLUMNS[mode] else next(iter(PASS_COLUMNS[mode]))


def _batches(data, batch_size: int):
    from saev_curate.curation.capture import iter_rows

    chunk: list[tuple[int, dict]] = []
    for item in iter_rows(data):
        chunk.append(item)
        if len(chunk) == batch_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@torch.no_grad()
def collect(model, processor, sae, weights, data, *, by: str | None = None, top_k: int = 20, sample: int = 20,
            batch_size: int = 32, config=None, progress: bool = True, seed: int = 0) -> Collected:
    """Run every row of ``data`` (a ``datasets.Dataset`` or a list of rows) through ``model`` up to the SAE's layer
    and ``sae``, accumulating :class:`FeatureStats` (``top_k`` examples and a ``sample`` per feature) and the
    ranking column ``by`` (default :func:`default_rank_by`; ``weights=None``: statistics only, no ranking)."""
    from saev_curate.curation.agreement import batch_agreement, feature_thresholds, template_token_ids
    from saev_curate.curation.capture import capture_rows
    from saev_curate.curation.config import ScoreConfig
    from saev_curate.curation.methods import get_method
    from saev_curate.vlm.layers import resolve_sae_layer
    from saev_curate.vlm.rows import prepare_batch

    config = config if config is not None else ScoreConfig()
    columns = list(data.column_names) if hasattr(data, "column_names") else list(data[0]) if len(data) else []
    if not columns:
        raise InputError("the data have no rows; give a dataset with rows to inspect")
    mode = shown_mode(columns)
    by = get_method(by).name if by is not None else default_rank_by(columns)
    method = get_method(by)
    from_data = method.column in columns
    in_pass = PASS_COLUMNS[mode].get(by) if weights is not None else None
    scorer = None
    if not from_data and in_pass is None and weights is not None:
        from saev_curate.curation.scorers import MethodScorer

        scorer = MethodScorer(model, processor, sae, weights, methods=[by], config=config)
    layer = resolve_sae_layer(model, sae, config.layer_value)
    template_ids = template_token_ids(processor)
    thresholds = feature_thresholds(int(sae.cfg.d_sae), config.delta, config.delta_rel,
                                    None if weights is None else weights.top_activation)
    stats = FeatureStats(int(sae.cfg.d_sae), top_k=top_k, sample=sample, seed=seed)
    n_total = len(data)
    scores: list[float | None] = [None] * n_total
    errors: list[str | None] = [None] * n_total
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_total, desc="inspect: rows through the model and the SAE", unit="row")
    dev = sae.W_dec.device
    for chunk in _batches(data, batch_size):
        ids = [i for i, _ in chunk]
        rows = [r for _, r in chunk]
        acts, kept, errs = capture_rows(model, processor, rows, layer, mode=mode, max_length=config.score_max_length,
                                        max_image_pixels=config.max_image_pixels)
        for i, e in zip(ids, errs):
            errors[i] = e
        if acts is not None:
            valid = acts.image_mask | acts.text_mask
            z = sae.encode(acts.resid.to(dev)).float().cpu()
            kept_ids = [ids[k] for k in kept]
            stats.observe(z, valid, acts.image_mask, acts.input_ids, kept_ids,
                          [row_concepts(rows[k]) for k in kept])
            if in_pass is not None and not from_data:
                prompt_len = None
                if mode == "chosen":
                    prep = prepare_batch(processor, [rows[k] for k in kept], mode="prompt", on_error="raise",
                                         max_length=config.score_max_length)
                    prompt_len = prep.inputs["attention_mask"].sum(1)
                agree = batch_agreement(sae, weights, acts, template_ids, thresholds, prompt_len, columns=(in_pass,))
                for j, i in enumerate(kept_ids):
                    scores[i] = agree[in_pass][j]
                    errors[i] = errors[i] or agree["error"][j]
        if from_data:
            for i, r in chunk:
                scores[i] = r.get(method.column)
        elif scorer is not None:
            col = scorer(rows)[method.column]
            for i, v in zip(ids, col):
                scores[i] = v
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    scores = [None if v is None or (isinstance(v, float) and v != v) else float(v) for v in scores]
    return Collected(stats, by, method.higher_is_cleaner, scores, errors, mode, layer)
