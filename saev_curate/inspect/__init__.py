"""Look inside an SAE on a vision-language model: per-feature statistics, labels, row explanations, the static site,
and the patch filter.

Modules: :mod:`~saev_curate.inspect.features` (streaming statistics), :mod:`~saev_curate.inspect.collect` (the pass
over a dataset), :mod:`~saev_curate.inspect.labels` (decoder logits, concept precision),
:mod:`~saev_curate.inspect.explain` (one row, as data), :mod:`~saev_curate.inspect.site` (the HTML) and
:mod:`~saev_curate.inspect.patch_filter` (keep the top patches by a feature set's activation).
"""
