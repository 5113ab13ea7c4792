"""The one family of user errors.

Every mistake a user can make at the command line or in a config (a bad flag value, a
missing or damaged file, a run directory that does not fit the command) raises a
subclass of `InputError` whose message is one line naming the flag or file and what was
expected. The command-line tools catch `InputError` alone (`trainers.cli.user_errors`) and print
it as `error: ...` with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """A user-facing input error; the message is one line naming the flag or file."""


class ConfigError(InputError):
    """An inconsistent combination of options, or a run directory that does not fit them."""


def _lines(error: BaseException) -> list:
    return [line.strip() for line in str(error).splitlines() if line.strip()] or [
        type(error).__name__]


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first non-blank line of an exception's message (TensorFlow's run to pages),
    for quoting inside a one-line error."""
    return _lines(error)[0][:limit]


def last_line(error: BaseException, limit: int = 200) -> str:
    """The last non-blank line (where Checkpoint.restore puts the mismatching shape)."""
    return _lines(error)[-1][:limit]
