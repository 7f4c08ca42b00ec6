"""saev-curate."""
