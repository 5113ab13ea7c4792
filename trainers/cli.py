"""What every command-line tool of the project shares.

absl reports a bad flag (`--lerning_rate=1`, `--steps=abc`, a missing flagfile) as
`FATAL Flags parsing error` with exit status 1; the project's tools answer every bad
input with one `error: ...` line and exit status 2 instead.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Callable, List

from absl import app, flags

from gali_tf import data, run_dir
from gali_tf.errors import InputError
from trainers import startup

USAGE_ERROR_EXIT_CODE = 2


def fail(message: str) -> None:
    """Prints the one-line user error and exits with status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_ERROR_EXIT_CODE)


def parse_flags(argv: List[str]) -> List[str]:
    """absl's flag parsing with its errors, and stray positional arguments, as one line."""
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as error:
        fail(" ".join(str(error).split()))
    if len(remaining) > 1:
        fail(f"unexpected arguments: {' '.join(remaining[1:])} (flags are written "
             "--name=value)")
    return remaining


def define_once(define: Callable[[], None]) -> Callable[[], None]:
    """Decorates a tool's define_flags so that it defines them once per process: every
    tool defines its flags on demand (run() calls it), never at import, because tests
    import several tools whose flags share names (--model_dir, --data_dir, ...)."""
    defined = []

    @functools.wraps(define)
    def once():
        if not defined:
            define()
            defined.append(True)
    return once


def from_flags(config_class, **derived):
    """`config_class` with every field that has a flag of the same name set from it,
    the others from `derived` or their defaults: a tool's flags map onto the library's
    config dataclass by name, so no mapping line repeats them."""
    return config_class(**{f.name: flags.FLAGS[f.name].value
                           for f in dataclasses.fields(config_class)
                           if f.name in flags.FLAGS and f.name not in derived}, **derived)


def user_errors(main: Callable[[List[str]], None]) -> Callable[[List[str]], None]:
    """Decorates a tool's main: every user error of the library (gali_tf.errors.
    InputError), a file system that refuses a write (a full disk, a read-only or
    forbidden path) and a folder image that fails to decode in the middle of a run
    become one `error:` line and exit status 2; anything else keeps its traceback."""
    @functools.wraps(main)
    def guarded(argv):
        try:
            return main(argv)
        except InputError as error:
            fail(str(error))
        except Exception as error:  # pylint: disable=broad-except
            unreadable = data.unreadable_image_error(error)
            if unreadable is not None:
                fail(str(unreadable))
            reason = run_dir.storage_failure(error)
            if reason is None:
                raise
            fail(f"cannot write ({reason}); free space or choose a writable path")
    return guarded


def run(main: Callable[[List[str]], None]) -> None:
    """app.run(main) with one-line errors for bad flags and without TensorFlow's INFO
    log lines (trainers.startup); `main` is @user_errors."""
    def quiet_main(argv):
        startup.quiet_info_logging()
        return main(argv)
    app.run(quiet_main, flags_parser=parse_flags)
