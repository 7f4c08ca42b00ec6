"""Curation: cross-modal weights (`crossmodal`), scorers (`scorers`), selection (`selection`), and
resumable multi-process scoring to disk (`sharded`). Knows models and SAEs only through `vlm` and `sae`."""
