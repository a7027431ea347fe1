"""Exceptions that the command line turns into one-line messages.

Every error a user can cause with bad input is a :class:`HepnnError`; its
message names the file (and row, branch, key or feature) and what was expected.
``hepnn`` prints ``error: <message>`` and exits non-zero, with a traceback only
under ``--debug``.

Exit statuses (:data:`EXIT_CODES`): 0 done, 2 bad input, config or output folder
(every :class:`HepnnError` but :class:`ChunkError`), 3 a chunk failed after its
retries, 130 interrupted, 1 a bug in hepnn (any other exception).
"""

from __future__ import annotations

#: The documented exit statuses of the ``hepnn`` command.
EXIT_CODES = {
    0: "done",
    1: "a bug in hepnn (the message says where to report it)",
    2: "bad config, input, model file or output folder",
    3: "a chunk failed after its retries and skipping is off",
    130: "interrupted",
}


class HepnnError(Exception):
    """Base class of all errors caused by user input."""


class InputError(HepnnError):
    """A data file is malformed (bad CSV row, truncated ROOT file, missing branch...)."""


class ConfigError(HepnnError):
    """A configuration or samples YAML is invalid."""


class ModelError(HepnnError):
    """A model file is missing, tampered with, or does not fit the data."""


class PathError(ConfigError):
    """A name from a config, samples or model file would make a path outside its folder."""


class OutputError(HepnnError):
    """The output folder cannot be used: locked by another run, not writable, or not hepnn's."""


class AccountingError(HepnnError):
    """Processed plus skipped entries do not add up to the expected entries."""


class ChunkError(InputError):
    """A chunk failed after its retries and the config does not allow skipping it.

    The command line exits with status 3 (``hepnn.pipeline.EXIT_SKIPPED``) for it,
    so scripts can tell an incomplete run from a bad config (status 2).
    """

    exit_code = 3
