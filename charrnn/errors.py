"""Errors a user can cause, each with the exit code the CLI reports (see docs/commands.md, "Exit codes").

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


class ArgumentTypeError(InvalidUsageError, TypeError):
    """An argument of the wrong type, from Python (`lm.sample(prime=5)`): also a `TypeError`."""


class ArgumentValueError(InvalidUsageError, ValueError):
    """An argument outside its range (`length=-5`, `temperature=0`): also a `ValueError`."""


def check_str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a str, got {type(value).__name__} {value!r:.40}")
    return value


def check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name} must be an int, got {type(value).__name__} {value!r:.40}")
    if value < minimum:
        raise ArgumentValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentTypeError(f"{name} must be a number, got {type(value).__name__} {value!r:.40}")
    return float(value)
