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
