"""The package's error types: each one a bad input a user can fix, with a message that names the key or
file, what it holds and what was expected. The commands (rethinking.cli) print USER_ERRORS as one line,
`error: <message>`, and exit with status 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad parameter: the message names the key, the value and what is allowed."""


class ModelError(ConfigError):
    """A model entry that cannot be built or does not map N x C x H x W to N x K logits."""


class DataError(ValueError):
    """Bad or missing input data; the message names the file or folder and what was expected."""


class ArtifactError(RuntimeError):
    """A missing, truncated or foreign artifact; the message names it and how to rebuild it."""


class RunBusyError(RuntimeError):
    """Another process is training the run (it holds the run folder's lock); the message names it."""


USER_ERRORS = (ConfigError, DataError, ArtifactError, RunBusyError)
