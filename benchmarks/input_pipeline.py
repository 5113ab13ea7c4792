r"""Images/s of each tf.data input pipeline alone, next to the train step it feeds.

    python benchmarks/input_pipeline.py
    python benchmarks/input_pipeline.py --data_dir=~/tensorflow_datasets   # + svhn, celeb_a

Each pipeline is the trainer's own (`gali_tf.data.make_dataset`: shuffle, repeat,
decode, batch, prefetch) at the batch size of its config, iterated with nothing else
running. `folder` reads PNGs generated into a temp dir at CelebA's size (178x218,
noisy, so decoding is not trivially cheap) and crops/resizes them to 32x32. TFDS
datasets are timed only when prepared under --data_dir (nothing is downloaded).
The ratio column divides by the GALI-4 train step's images/s on the networks of the
dataset's config (same process and threads), timed with --step_steps steps: input
never bounds training when it is well above 1 (target: 20x).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
from absl import app, flags

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import common

flags.DEFINE_integer("batches", 50, "Timed batches per pipeline (after --warmup_batches).")
flags.DEFINE_integer("warmup_batches", 5, "Untimed batches first (buffers fill, threads start).")
flags.DEFINE_integer("batch", 100, "Batch size (the configs' 100).")
flags.DEFINE_integer("folder_images", 1000, "PNG files generated for the folder pipeline.")
flags.DEFINE_string("data_dir", None, "TFDS data_dir with prepared svhn_cropped / celeb_a.")
flags.DEFINE_integer("step_steps", 3, "Timed train steps per network (0: skip the ratio).")
flags.DEFINE_integer("threads", 0, "Compute threads (0 = all cores).")
FLAGS = flags.FLAGS


def _pipelines(image_dir):
    """(name, DataConfig, NetworkConfig of the config that trains on it)."""
    from gali_tf import data, networks
    yield ("digits", data.DataConfig(dataset="digits"),
           networks.NetworkConfig(arch="small", example_shape=(16, 16, 1), width=16,
                                  latent_dim=64))
    yield ("toy25", data.DataConfig(dataset="toy25"),
           networks.NetworkConfig(arch="mlp", example_shape=(2,), mlp_hidden=400, latent_dim=2))
    yield ("folder (PNG 178x218 -> 32x32)",
           data.DataConfig(dataset="folder", image_dir=image_dir, image_size=32),
           networks.NetworkConfig(arch="svhn32", example_shape=(32, 32, 3), latent_dim=256))
    if FLAGS.data_dir:
        yield ("svhn_cropped", data.DataConfig(dataset="svhn_cropped", data_dir=FLAGS.data_dir),
               networks.NetworkConfig(arch="svhn32", example_shape=(32, 32, 3), latent_dim=256))
        yield ("celeb_a", data.DataConfig(dataset="celeb_a", data_dir=FLAGS.data_dir),
               networks.NetworkConfig(arch="celeba64", example_shape=(64, 64, 3),
                                      latent_dim=256, leaky_slope=0.02))


def _write_pngs(directory: str, count: int) -> None:
    import tensorflow as tf
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 178, dtype=np.float32)[None, :, None]
    for i in range(count):
        image = np.clip(ramp + rng.normal(0, 25, (218, 178, 3)), 0, 255).astype(np.uint8)
        tf.io.write_file(os.path.join(directory, f"{i:05d}.png"), tf.io.encode_png(image))


def _pipeline_images_per_s(config) -> float:
    from gali_tf import data
    iterator = iter(data.make_dataset(config, "train", FLAGS.batch, shuffle=True, repeat=True))
    for _ in range(FLAGS.warmup_batches):
        next(iterator)
    start = time.perf_counter()
    for _ in range(FLAGS.batches):
        next(iterator).numpy()
    return FLAGS.batch * FLAGS.batches / (time.perf_counter() - start)


def main(argv):
    del argv
    threads = FLAGS.threads or os.cpu_count()
    common.set_threads(threads)
    from gali_tf import data
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {common.load_average()}  threads={threads}")
    image_dir = tempfile.mkdtemp(prefix="gali_pipeline_bench_")
    steps = {}
    try:
        _write_pngs(image_dir, FLAGS.folder_images)
        rows = {}
        for name, config, network in _pipelines(image_dir):
            try:
                pipeline = _pipeline_images_per_s(config)
            except data.DataError as error:  # e.g. TFDS data not prepared in --data_dir
                rows[name] = f"skipped ({error})"
                continue
            text = f"{pipeline:10.0f} images/s"
            if FLAGS.step_steps > 0:
                key = (network.arch, network.example_shape)
                if key not in steps:
                    _, _, run, _ = common.train_step("gali4", network, FLAGS.batch,
                                                     jit_compile=True)
                    steps[key] = FLAGS.batch / common.seconds_per_call(run, FLAGS.step_steps, 2)
                text += (f"   train step ({network.arch}, GALI-4) {steps[key]:8.1f} images/s"
                         f"   ratio {pipeline / steps[key]:7.1f}x")
            rows[name] = text
            print(f"{name}: {text}", flush=True)
        print()
        rows["peak RSS"] = f"{common.peak_rss_mib():.0f} MiB"
        rows["finished"] = f"{time.strftime('%H:%M:%S')}, {common.load_average()}"
        common.print_table(rows)
    finally:
        shutil.rmtree(image_dir, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
