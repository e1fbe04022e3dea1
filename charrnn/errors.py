"""Errors a user can cause, each with the exit code the CLI reports (see README: Exit codes)."""


class CharRNNError(Exception):
    """A problem with the user's input or environment: shown as one line, no traceback."""

    exit_code = 1


class UsageError(CharRNNError):
    """Bad options or configuration."""

    exit_code = 2


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
