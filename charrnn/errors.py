"""Errors a user can cause, each with the exit code the CLI reports (see README: Exit codes).

The CLI prints any `CharRNNError` as one line and exits with its `exit_code`; a Python user
catches `CharRNNError` (or one of its kinds below).
"""


class CharRNNError(Exception):
    """A problem with the user's input or environment: shown as one line, no traceback."""

    exit_code = 1


class InvalidUsageError(CharRNNError):
    """Bad options, configuration or arguments."""

    exit_code = 2


class CheckpointError(CharRNNError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, foreign or inconsistent."""


class BusyError(CharRNNError):
    """Another process holds the run directory (EX_TEMPFAIL, so cron can retry)."""

    exit_code = 75


class NonFiniteError(CharRNNError):
    """The loss or a gradient became NaN or infinite."""


class SignalError(CharRNNError):
    """Training stopped by a signal after saving; exit code 128 + signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
