"""An export directory as its readers see it: the layout of a version, its
metadata.json, and the repair of what a killed export left behind.

    EXPORT_DIR/<step>/encoder/        reusable TF2 SavedModel (TF Hub format)
    EXPORT_DIR/<step>/generator/      SavedModel: generate(z), reconstruct(images)
    EXPORT_DIR/<step>/metadata.json   shapes, value range, step, the run's flags

`export.exporter` writes versions; `gali_tf.downstream` (and any loader of an export
directory) reads them. A version is written to a hidden temp directory and renamed into
place; --overwrite moves the old version aside first, so an export killed between the
two renames leaves only `.old-<step>-*`, which `recover_versions` renames back.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from typing import List

import tensorflow as tf

from gali_tf.errors import ConfigError

ENCODER_DIR = "encoder"
GENERATOR_DIR = "generator"
VALUE_RANGE = (-1.0, 1.0)
FORMAT = "gali_tf-export-1"
# The encoder's fine-tuning endpoints, keyed by the inference endpoint each repeats
# with training=True (BatchNorm on batch statistics): Keras 3 fine-tunes the export
# with TFSMLayer(call_endpoint=key, call_training_endpoint=value, trainable=True).
# metadata.json records them as "training_endpoints"; exports before them lack it.
TRAINING_ENDPOINTS = {"encode": "encode_training", "serving_default": "serving_default_training"}
# Keys a reader of metadata.json relies on (older exports may lack newer ones).
METADATA_KEYS = ("format", "image_shape", "latent_dim", "step")
# A leftover whose owner cannot be checked (another host, or a name without one) is
# taken for a dead export's after this long; exports take seconds to minutes.
STALE_AFTER_SECONDS = 3600
# .tmp-<step>-<host>-<pid>-<token> and .old-<step>-<host>-<pid>-<token>; exports
# written before the owner was recorded left .tmp-<step>-<token> and .old-<step>-<token>.
_LEFTOVER = re.compile(
    r"^\.(?P<kind>tmp|old)-(?P<step>\d+)-(?:(?P<host>.+)-(?P<pid>\d+)-)?(?P<token>[0-9a-f]{8})$")


def read_metadata(path: str, flag: str) -> dict:
    """metadata.json of a version as a dict with every METADATA_KEYS key; a file that is
    not JSON, not an object, or lacks a key is a one-line ConfigError naming it (`flag`
    is the option that led there, e.g. "--hub_module=OUT/1/encoder")."""
    fix = "re-export the run with export.main --overwrite"
    try:
        with tf.io.gfile.GFile(path) as f:
            values = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{flag}: {path} is not valid JSON ({error}); {fix}") from None
    except (OSError, tf.errors.OpError) as error:
        raise ConfigError(f"{flag}: cannot read {path} "
                          f"({getattr(error, 'strerror', None) or error}); {fix}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{flag}: {path} holds a JSON {type(values).__name__}, "
                          f"not an object; {fix}")
    missing = [key for key in METADATA_KEYS if key not in values]
    if missing:
        raise ConfigError(f"{flag}: {path} lacks {', '.join(missing)}; {fix}")
    return values


def training_endpoint(metadata: dict, call_endpoint: str, flag: str) -> str:
    """The training endpoint that pairs with `call_endpoint` in TFSMLayer, from a version's
    metadata (read_metadata). Exports written before training endpoints existed lack
    them and load fine otherwise, so the error says to re-export, in one line."""
    endpoints = metadata.get("training_endpoints")
    if not isinstance(endpoints, dict):
        raise ConfigError(f"{flag}: the export has no training endpoints (written before "
                          "them); re-export the run with export.main --overwrite")
    if call_endpoint not in endpoints:
        raise ConfigError(f"{flag}: no training endpoint pairs with {call_endpoint!r}; "
                          f"expected call_endpoint one of {', '.join(sorted(endpoints))}")
    return endpoints[call_endpoint]


def host() -> str:
    """This machine's name as written into temp names (no '-': the name's separator)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user
    return True


def _age_seconds(path: str) -> float:
    try:
        return time.time() - tf.io.gfile.stat(path).mtime_nsec / 1e9
    except tf.errors.OpError:
        return 0.0  # no mtime (e.g. an object store's directory): never taken as old


def _is_stale(path: str, match: re.Match) -> bool:
    """Whether a leftover belongs to an export that is no longer running: its pid is
    gone on this host, or it is older than STALE_AFTER_SECONDS (the only test for
    another host's exports, on a shared file system, and against a reused pid). A
    running export's directories are left alone: removing its `.tmp-*` would break it."""
    if match["pid"] and match["host"] == host() and not _pid_alive(int(match["pid"])):
        return True
    return _age_seconds(path) > STALE_AFTER_SECONDS


def _stale_leftovers(export_dir: str) -> List[tuple]:
    """(match, path) of the dead exports' `.tmp-*` and `.old-*`, newest first."""
    found = []
    for name in tf.io.gfile.listdir(export_dir):
        name = name.rstrip("/")
        match = _LEFTOVER.match(name)
        path = os.path.join(export_dir, name)
        if match and _is_stale(path, match):
            found.append((_age_seconds(path), match, path))
    return [(match, path) for _, match, path in sorted(found, key=lambda t: t[0])]


def recover_versions(export_dir: str) -> List[str]:
    """Repairs what killed exports left in `export_dir`; returns a line per version it
    restored.

    An `.old-<step>-*` without `<step>/` is the previous version of an --overwrite killed
    between its two renames: the only copy, renamed back to `<step>/` (the newest if
    several). Other leftovers of dead exports are removed: `.old-*` whose `<step>/`
    exists (the swap finished) and `.tmp-*` (never renamed into place, maybe partial).
    """
    if not tf.io.gfile.isdir(export_dir):
        return []
    restored = []
    leftovers = _stale_leftovers(export_dir)
    # Old versions first: a .tmp of the same export is removed only after them.
    for match, path in sorted(leftovers, key=lambda item: item[0]["kind"] != "old"):
        final = os.path.join(export_dir, match["step"])
        try:
            if match["kind"] == "old" and not tf.io.gfile.exists(final):
                tf.io.gfile.rename(path, final)
                restored.append(f"--export_dir={export_dir}: version {match['step']} restored "
                                f"from {os.path.basename(path)}, left by an export killed "
                                "while replacing it")
            else:
                tf.io.gfile.rmtree(path)
        except (OSError, tf.errors.OpError) as error:
            todo = (f"rename it to {final}" if match["kind"] == "old"
                    and not tf.io.gfile.exists(final) else "delete it")
            raise ConfigError(f"--export_dir={export_dir}: cannot repair {path}, left by a "
                              f"killed export ({getattr(error, 'strerror', None) or error}); "
                              f"{todo}") from None
    return restored
