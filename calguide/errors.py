"""calguide's own errors: each is something the user can fix from its one line.

Every console script catches :class:`CalguideError` (and a missing file) and prints
``calguide: error: <what>, <where>, <what was expected>`` with exit status 2. Anything else is
a bug and keeps its traceback (exit status 1). Each class also derives from the built-in
exception it refines, so ``except ValueError`` keeps working for library users.
"""

from __future__ import annotations


class CalguideError(Exception):
    """Base of the errors a user fixes by changing a value, a file or a folder."""


class ConfigError(CalguideError, ValueError):
    """A config value is wrong; the message names the key and what was allowed."""


class InputFileError(CalguideError, ValueError):
    """A file the user named is not what the job expects (layout, keys, shapes, values)."""


class CheckpointError(InputFileError):
    """A weights file cannot be read, holds no state dict, or does not fit the network."""


class DataError(CalguideError, ValueError):
    """Data (samples, labels, images) that contradict the model or the configuration."""


class RunStateError(CalguideError, RuntimeError):
    """A run folder cannot be used as asked: held by another process, made from other inputs,
    or not writable (e.g. the disk is full)."""
