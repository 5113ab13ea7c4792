"""What every command-line tool does before it imports TensorFlow: keep TensorFlow's C++
start-up log off the user's screen.

`import tensorflow` writes a screenful of C++ log lines (oneDNN, "Could not find cuda
drivers", CPU instruction sets) before absl's logging is initialised, so
TF_CPP_MIN_LOG_LEVEL cannot silence them; the first device use adds a red-looking
`E0000 ... failed call to cuInit` on machines without a GPU. So the tools import
TensorFlow with the process's stderr captured, drop those start-up lines, pass on
anything else (a Python warning, an import error), and set TF_CPP_MIN_LOG_LEVEL to 3
for the rest of the run unless the user set it: TensorFlow's own errors still reach the
user as Python exceptions. `quiet_info_logging` does the same for TensorFlow's
Python INFO lines. `TF_CPP_MIN_LOG_LEVEL=0` brings every line back.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
# absl / TensorFlow C++ log lines: "I0000 00:00:1796226498.031750   13842 port.cc:153] ..."
# and the two lines that come with them at import.
_START_UP_LINE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w.]+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: )")


def without_start_up_lines(text: str) -> str:
    """`text` without TensorFlow's C++ start-up log lines."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not _START_UP_LINE.match(line))


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow without its C++ start-up lines (see the module docstring);
    does nothing when it is imported already or TF_CPP_MIN_LOG_LEVEL=0 asks for every
    line. A level the user set is kept; otherwise it becomes 3."""
    if "tensorflow" in sys.modules or os.environ.get(LOG_LEVEL_VARIABLE) == "0":
        return
    os.environ.setdefault(LOG_LEVEL_VARIABLE, "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            sys.stderr.write(without_start_up_lines(captured.read().decode(errors="replace")))
            sys.stderr.flush()


def quiet_info_logging() -> None:
    """TensorFlow's Python-side INFO lines off ("Sharding callback duration: 85
    microseconds" at every checkpoint), unless TF_CPP_MIN_LOG_LEVEL=0 or --verbosity
    asks for them; warnings and errors stay. Called once the flags are parsed."""
    from absl import flags, logging  # pylint: disable=import-outside-toplevel
    if os.environ.get(LOG_LEVEL_VARIABLE) == "0" or flags.FLAGS["verbosity"].present:
        return
    logging.set_verbosity(logging.WARNING)
