"""Exception types: every user-facing error says what is wrong and how to fix it."""


class SaevError(Exception):
    """Base class for errors caused by user input (files, configs, data rows, settings)."""


class CheckpointError(SaevError, ValueError):
    """An SAE checkpoint folder is missing files, has wrong tensors, or an unusable config."""


class InputError(SaevError, ValueError):
    """A data row, model or setting cannot be used as given."""


def error_line(exc: BaseException) -> str:
    """How a command reports ``exc`` in one line: a user error's own message; anything else its type and message
    with the pointer to ``--traceback``."""
    if isinstance(exc, SaevError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}\n(rerun with --traceback for the full Python traceback)"
