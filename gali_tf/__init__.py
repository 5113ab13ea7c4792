"""gali_tf: Generalized Adversarially Learned Inference (GALI), ALI/BiGAN and ALICE.

The library never reads command-line flags: the tools in `trainers/` and `export/` turn
flags into its config dataclasses and call it; a notebook does the same:

    import gali_tf
    result = gali_tf.train(gali_tf.TrainConfig(
        model_dir="runs/notebook", data=gali_tf.DataConfig(dataset="digits"),
        model=gali_tf.ModelConfig(tuples="gali4"), steps=500))
    run = gali_tf.restore("runs/notebook")   # run.encoder, run.generator, run.record

Or on your own images (uint8 or floats in [-1, 1], a numpy array [N, H, W, C] or a
tf.data.Dataset of images or batches) with your own Keras callbacks after the trainer's:

    gali_tf.train(gali_tf.TrainConfig(model_dir="runs/mine", steps=500),
                  dataset=my_images, callbacks=[my_callback])

docs/architecture.md maps the modules.
"""

import importlib

# The public names, loaded on first use (importing a submodule stays light).
_API = {
    "train": "gali_tf.training", "TrainConfig": "gali_tf.training",
    "TrainResult": "gali_tf.training", "DataConfig": "gali_tf.data",
    "NetworkConfig": "gali_tf.networks", "ModelConfig": "gali_tf.model",
    "restore": "gali_tf.run_dir", "RestoredRun": "gali_tf.run_dir",
    "InputError": "gali_tf.errors",
}
_RENAMED = {"restore": "restore_networks"}
__all__ = sorted(_API)


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'gali_tf' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), _RENAMED.get(name, name))
