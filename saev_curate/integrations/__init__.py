"""Integrations with training libraries (TRL / transformers ``Trainer``): see :mod:`saev_curate.integrations.trl`."""
