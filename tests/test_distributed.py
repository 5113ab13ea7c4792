"""Multi-worker training: two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy).

Each worker is a separate Python process with its own TF_CONFIG, as on two hosts;
the ports are picked free by binding port 0, and every process is bounded by a
timeout so a hung collective fails the test instead of hanging the suite.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One worker: trains the tiny model through the library, then saves its final weights
# and its replica's share of a StepNoise draw for the test to compare.
WORKER = r"""
import json, sys
import numpy as np
import tensorflow as tf
from gali_tf import data, networks, training
from gali_tf.model import ModelConfig, StepNoise

model_dir, out = sys.argv[1], sys.argv[2]
config = training.TrainConfig(
    model_dir=model_dir, data=data.DataConfig(dataset="digits", image_size=8),
    network=networks.NetworkConfig(arch="small", latent_dim=3, width=4),
    model=ModelConfig(tuples="gali4"), batch_size=20, steps=2, verbose=0,
    strategy="multi_worker", log_every=1, image_every=2, checkpoint_every=1)
result = training.train(config, flags_text="--steps=2\n")
model = result.model
strategy = model.distribute_strategy

@tf.function
def draw():
    return strategy.run(lambda: StepNoise(0, tf.constant(0)).normal([2, 3]))

noise = strategy.experimental_local_results(draw())[0].numpy()
weights = [w.numpy() for w in model.weights]
np.savez(out, noise=noise, *weights)
print(json.dumps({"step": result.step, "replicas": strategy.num_replicas_in_sync,
                  "chief": training.is_chief(strategy),
                  "synchronized_bn": model.network_config.synchronized_bn}))
"""


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_two_workers_train_in_lockstep_and_only_the_chief_writes(tmp_path):
    model_dir = tmp_path / "run"
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    processes = []
    for index in range(2):
        worker_tmp = tmp_path / f"tmp{index}"
        worker_tmp.mkdir()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(worker_tmp),
                   PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(model_dir), str(tmp_path / f"w{index}.npz")],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=240)
            assert process.returncode == 0, stderr[-3000:]
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert [o["chief"] for o in outputs] == [True, False]
    for o in outputs:
        assert o == {**o, "step": 2, "replicas": 2, "synchronized_bn": True}

    chief, worker = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    weights = sorted(k for k in chief.files if k != "noise")
    assert len(weights) > 10
    for key in weights:  # every weight, BatchNorm statistic and spectral-norm vector
        np.testing.assert_array_equal(chief[key], worker[key], err_msg=key)
    # Per-replica noise: each worker holds its own slice of the global-batch draw.
    full = tf.random.stateless_normal([4, 3], [0, 1]).numpy()
    np.testing.assert_allclose(chief["noise"], full[:2], rtol=1e-6)
    np.testing.assert_allclose(worker["noise"], full[2:], rtol=1e-6)

    # The chief wrote the run; the worker's copies went to its temp dir, now deleted.
    assert sorted(os.listdir(model_dir)) == ["checkpoints", "flags.txt", "flags_history.jsonl",
                                             "run.json", "train", "trainer.lock"]
    assert tf.train.latest_checkpoint(model_dir / "checkpoints").endswith("ckpt-2")
    assert os.listdir(tmp_path / "tmp1") == []
