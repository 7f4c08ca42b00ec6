"""Moved to :mod:`saev_curate.core.lazy`; this name works, with a DeprecationWarning, for one release."""

from saev_curate.core.moved import moved

moved(__name__, "saev_curate.core.lazy")
