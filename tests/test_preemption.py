"""Preemption-safe runs: SIGTERM saves the current step, SIGKILL resumes from the last
complete checkpoint, and a half-written checkpoint is never picked up.

The trainer runs as a real subprocess and is signalled from outside, as a job
scheduler would do it.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from gali_tf import run_dir, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 400
FLAGS = ["--image_size=8", "--width=4", "--latent_dim=3", "--batch_size=50",
         "--jit_compile=false", "--mixed_precision=float32",
        "--verbose=2", "--log_every=50", "--image_every=0",
         "--checkpoint_every=10", f"--steps={TOTAL}"]


def _start(model_dir, log):
    return subprocess.Popen([sys.executable, "-m", "trainers.main", f"--model_dir={model_dir}",
                             *FLAGS], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def _latest_step(model_dir):
    path = run_dir.latest_complete_checkpoint(os.path.join(model_dir, "checkpoints"))
    return int(path.rsplit("-", 1)[-1]) if path else 0


def _wait_for_checkpoint_after(process, model_dir, step, timeout=180):
    deadline = time.monotonic() + timeout
    while _latest_step(model_dir) <= step:
        assert process.poll() is None, "the trainer ended before it could be signalled"
        assert time.monotonic() < deadline, f"no checkpoint after step {step} in {timeout} s"
        time.sleep(0.02)


def _finish(process, timeout=120):
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()


def test_sigterm_saves_then_sigkill_resumes_to_the_same_total(tmp_path):
    model_dir = str(tmp_path / "run")
    logs = [open(tmp_path / f"log{i}.txt", "w+") for i in range(3)]

    # 1. SIGTERM mid-run: the trainer finishes its step, saves it and exits with 42.
    first = _start(model_dir, logs[0])
    _wait_for_checkpoint_after(first, model_dir, 0)
    first.send_signal(signal.SIGTERM)
    assert _finish(first) == training.PREEMPTED_EXIT_CODE, open(logs[0].name).read()[-3000:]
    saved = re.search(r"SIGTERM: saved the checkpoint of step (\d+)", open(logs[0].name).read())
    assert saved, open(logs[0].name).read()[-3000:]
    sigterm_step = int(saved.group(1))
    assert 10 <= sigterm_step < TOTAL and _latest_step(model_dir) == sigterm_step

    # 2. Restart, then SIGKILL (no chance to save) once a later checkpoint exists.
    second = _start(model_dir, logs[1])
    _wait_for_checkpoint_after(second, model_dir, sigterm_step)
    second.kill()
    assert _finish(second) == -signal.SIGKILL
    killed_at = _latest_step(model_dir)
    assert f"resuming from ckpt-{sigterm_step} (step {sigterm_step})" in open(logs[1].name).read()

    # What a kill during a save leaves: data and a partial index of a newer step, and
    # the saver's temp dir, none of them recorded in the state file.
    stray = killed_at + 3
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / f"ckpt-{stray}.data-00000-of-00001").write_bytes(b"\0" * 100)
    (checkpoints / f"ckpt-{stray}.index").write_bytes(b"partial")
    (checkpoints / f"ckpt-{stray}_temp").mkdir()

    # 3. Restart: resumes from the last complete checkpoint and stops at the same total
    # an uninterrupted run reaches.
    third = _start(model_dir, logs[2])
    assert _finish(third, timeout=300) == 0, open(logs[2].name).read()[-3000:]
    output = open(logs[2].name).read()
    assert f"resuming from ckpt-{killed_at} (step {killed_at})" in output
    assert f"step {TOTAL}" in output
    assert _latest_step(model_dir) == TOTAL
    assert tf.train.latest_checkpoint(checkpoints).endswith(f"ckpt-{TOTAL}")


def test_latest_complete_checkpoint_skips_recorded_checkpoints_without_files(tmp_path):
    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=3)
    for step in (1, 2, 3):
        manager.save(checkpoint_number=step)
    assert run_dir.latest_complete_checkpoint(str(tmp_path)).endswith("ckpt-3")
    os.remove(tmp_path / "ckpt-3.index")
    # tf.train.latest_checkpoint gives up (a resume would start over); we fall back.
    assert tf.train.latest_checkpoint(str(tmp_path)) is None
    assert run_dir.latest_complete_checkpoint(str(tmp_path)).endswith("ckpt-2")
    assert run_dir.latest_complete_checkpoint(str(tmp_path / "none")) is None
