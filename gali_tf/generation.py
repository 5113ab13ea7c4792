"""Conditional generation grids of a conditional ALI run (ALI 4.4, Fig. 7): the
library part of `python -m trainers.generate` (its docstring describes the grid)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from gali_tf import data, features, run_dir, visualize
from gali_tf.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """What to generate (trainers.generate's flags of the same names)."""

    model_dir: str
    out: str
    checkpoint: Optional[str] = None
    attributes: Sequence[str] = ()
    base_attributes: Sequence[str] = ()
    cumulative: bool = False
    classes: Sequence[str] = ()
    columns: int = 8
    z_seed: int = 0
    classifier: str = ""
    eval_samples: int = 500


@dataclasses.dataclass(frozen=True)
class GenerateResult:
    grid_path: str
    grid_shape: tuple             # (H, W, C) of grid.png
    rows: list                    # one name per row
    # Row name -> the classifier's hit rate on generated images (with --classifier).
    accuracy: Optional[dict] = None


def _attribute_indices(names: Sequence[str], flag: str) -> list:
    known = {name.lower(): i for i, name in enumerate(data.CELEBA_ATTRIBUTES)}
    indices = []
    for name in names:
        if name.strip().lower() not in known:
            raise ConfigError(f"{flag}: unknown CelebA attribute {name.strip()!r} (expected "
                              f"names such as Male, Smiling, Blond_Hair; all 40 are "
                              "gali_tf.data.CELEBA_ATTRIBUTES)")
        indices.append(known[name.strip().lower()])
    return indices


def condition_rows(opts: GenerateOptions, dataset: str, condition_dim: int):
    """(row names, y [rows, condition_dim], the entries of y each row asks for)."""
    if dataset in data.MULTI_LABEL_DATASETS:
        if opts.classes:
            raise ConfigError(f"--classes: the run's --dataset={dataset} is conditioned on "
                              "attributes; use --attributes")
        if not opts.attributes:
            raise ConfigError(f"--attributes is required for --dataset={dataset} "
                              "(e.g. --attributes=Black_Hair,Blond_Hair,Smiling)")
        base = _attribute_indices(opts.base_attributes, "--base_attributes")
        wanted = _attribute_indices(opts.attributes, "--attributes")
        names, rows, asked = [], [], []
        for k, index in enumerate(wanted):
            on = base + (wanted[:k + 1] if opts.cumulative else [index])
            y = np.zeros(condition_dim, np.float32)
            y[on] = 1.0
            rows.append(y)
            asked.append(sorted(set(on)))
            names.append("+".join(data.CELEBA_ATTRIBUTES[i] for i in sorted(set(on))))
        return names, np.stack(rows), asked
    if opts.attributes or opts.base_attributes:
        raise ConfigError(f"--attributes: the run's --dataset={dataset} is conditioned on a "
                          "class; use --classes")
    classes = list(opts.classes) or [str(k) for k in range(condition_dim)]
    indices = []
    for text in classes:
        try:
            k = int(text)
        except ValueError:
            k = -1
        if not 0 <= k < condition_dim:
            raise ConfigError(f"--classes={','.join(classes)}: {text!r} is not a class of "
                              f"--dataset={dataset} (0..{condition_dim - 1})")
        indices.append(k)
    columns = data.condition_columns(dataset, condition_dim)
    return ([columns[k] for k in indices], np.eye(condition_dim, dtype=np.float32)[indices],
            [[k] for k in indices])


def generate_run(opts: GenerateOptions) -> GenerateResult:
    if not opts.model_dir:
        raise ConfigError("--model_dir is required (a run directory of a --conditional run)")
    if not opts.out:
        raise ConfigError("--out is required (a directory for grid.png)")
    if opts.columns < 1 or opts.eval_samples < 1:
        raise ConfigError("--columns and --eval_samples must be >= 1")
    run = run_dir.restore_networks(opts.model_dir, opts.checkpoint)
    if not run.conditional:
        raise ConfigError(f"--model_dir={opts.model_dir}: not a conditional run (train it with "
                          "--conditional)")
    dataset, condition_dim = run.record.dataset, run.condition_dim
    names, rows, asked = condition_rows(opts, dataset, condition_dim)
    classifier = None
    if opts.classifier:
        classifier = features.load_feature_model(features.FeatureConfig(
            opts.classifier, "logits", flag_prefix="classifier"))

    latent_dim = run.record.latent_dim

    @tf.function
    def generate(z, y):
        return run.generator(z, training=False, condition=y)

    z = tf.random.stateless_normal([opts.columns, latent_dim], [opts.z_seed, 0])
    images = tf.concat([generate(z, tf.tile(y[None], [opts.columns, 1])) for y in rows], 0)
    tf.io.gfile.makedirs(opts.out)
    grid = visualize.image_grid(images, columns=opts.columns)
    grid_path = os.path.join(opts.out, "grid.png")
    visualize.write_png(grid, grid_path, image_size=int(images.shape[1]))
    with tf.io.gfile.GFile(os.path.join(opts.out, "rows.json"), "w") as f:
        f.write(json.dumps({"model_dir": opts.model_dir, "checkpoint": run.checkpoint,
                            "z_seed": opts.z_seed, "columns": opts.columns,
                            "rows": names}, indent=2) + "\n")
    print(f"{grid_path}: {len(names)} rows x {opts.columns} columns ({run.checkpoint}); "
          f"rows: {', '.join(names)}")

    accuracy = None
    if classifier is not None:
        accuracy = {}
        multi = dataset in data.MULTI_LABEL_DATASETS
        for r, (name, y, wanted) in enumerate(zip(names, rows, asked)):
            hits = []
            for start in range(0, opts.eval_samples, 100):
                n = min(100, opts.eval_samples - start)
                # Other latents than the grid's: seed (z_seed, 1 + row), offset by batch.
                z_eval = tf.random.stateless_normal([n, latent_dim],
                                                    [opts.z_seed, 1 + r * 10_000 + start])
                logits = classifier(generate(z_eval, tf.tile(y[None], [n, 1]))).numpy()
                if multi:
                    hits.append((logits[:, wanted] > 0).mean(axis=1))
                else:
                    hits.append(logits.argmax(axis=1) == wanted[0])
            accuracy[name] = float(np.mean(np.concatenate(hits)))
        what = ("share of the row's attributes the classifier finds" if multi
                else "classifier accuracy on the requested class")
        print(f"{what}, {opts.eval_samples} generated images per row:")
        for name, value in accuracy.items():
            print(f"  {name}: {value:.3f}")
        print(f"  mean: {np.mean(list(accuracy.values())):.3f}")
    return GenerateResult(grid_path, tuple(int(s) for s in grid.shape[1:]), names, accuracy)
