"""Writes that a reader never sees half done, on local disks and tf.io.gfile's remote
file systems alike (GCS, HDFS): a file or directory is written under a temporary name
and renamed into place."""

from __future__ import annotations

import os

import tensorflow as tf

# Next to every SavedModel the project exports (an encoder/generator version, a
# classifier): what a reader needs to feed it without gali_tf (shapes, value range).
METADATA_FILE = "metadata.json"


def write_text_atomically(path: str, text: str) -> None:
    """Writes `path` via a temporary file and a rename (its folder is created); a
    failure leaves the previous file, never half of the new one."""
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    temporary = path + ".tmp"
    try:
        with tf.io.gfile.GFile(temporary, "w") as f:
            f.write(text)
        tf.io.gfile.rename(temporary, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.remove(temporary)
        raise


def swap_in_directory(new: str, final: str, old: str) -> None:
    """Renames the complete directory `new` to `final`. An existing `final` is first
    moved to `old` (a rename onto a non-empty directory fails) and removed at the end,
    so at every moment `final` is either the previous or the new complete directory; if
    the second rename fails, the previous one is put back."""
    try:
        if tf.io.gfile.exists(final):
            tf.io.gfile.rename(final, old)
        tf.io.gfile.rename(new, final)
    except BaseException:
        if tf.io.gfile.exists(old) and not tf.io.gfile.exists(final):
            tf.io.gfile.rename(old, final)
        raise
    if tf.io.gfile.exists(old):
        tf.io.gfile.rmtree(old)
