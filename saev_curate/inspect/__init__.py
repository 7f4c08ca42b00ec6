"""Look inside: per-feature pages, row explanations, image heat maps and the patch filter, over the library below."""
