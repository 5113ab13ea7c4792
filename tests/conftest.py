"""Test set-up: two logical CPU devices stand in for two GPUs (MirroredStrategy tests).

The device split must happen before TensorFlow initialises its devices, so it is
done here, at import time, before any test module runs TF ops.
"""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


@pytest.fixture
def trainer_flags():
    """Parses trainer flags in-process and restores absl's global state afterwards."""
    from absl import flags
    from trainers import main as trainer
    trainer.define_flags()
    saved = flags.FLAGS.flag_values_dict()

    def parse(args):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["trainers.main", *args])
        return trainer
    yield parse
    flags.FLAGS.unparse_flags()
    for name, value in saved.items():
        setattr(flags.FLAGS, name, value)


@pytest.fixture(autouse=True, scope="session")
def float32_unless_asked():
    """In-process runs measure float32 only (--mixed_precision=auto would also time
    mixed_bfloat16 on a machine with bfloat16 instructions, and train in it if faster):
    a test's numbers must not depend on the machine it runs on, nor on a timing.
    Session-wide, so module fixtures that train are pinned too; tests of the choice
    patch the check back (tests/test_execution.py)."""
    from gali_tf import execution
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(execution, "has_bfloat16_instructions", lambda: False)
        # The measurement's own process costs a TensorFlow start-up (seconds) per run:
        # tests measure in theirs, with the same function; tests/test_execution.py runs
        # the real one.
        patch.setattr(execution, "in_child_process", lambda function, *args: function(*args))
        yield
