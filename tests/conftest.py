"""Test set-up: two logical CPU devices stand in for two GPUs (MirroredStrategy tests).

The device split must happen before TensorFlow initialises its devices, so it is
done here, at import time, before any test module runs TF ops.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
