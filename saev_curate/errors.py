"""Exception types: every user-facing error says what is wrong and how to fix it."""


class SaevError(Exception):
    """Base class for errors caused by user input (files, configs, data rows, settings)."""


class CheckpointError(SaevError, ValueError):
    """An SAE checkpoint folder is missing files, has wrong tensors, or an unusable config."""


class InputError(SaevError, ValueError):
    """A data row, model or setting cannot be used as given."""
