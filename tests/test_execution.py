"""The start-up choice of XLA: what is measured, restored, recorded and reused.

No test here asserts which mode is faster (that is the machine's, shown by
benchmarks/train_step.py); they check the choice follows the timings it is given.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from gali_tf import data, execution, networks, training
from gali_tf.model import ModelConfig


def _tiny(tmp_path, **overrides):
    config = training.TrainConfig(
        model_dir=str(tmp_path / "run"), data=data.DataConfig(dataset="digits", image_size=8),
        network=networks.NetworkConfig(arch="small", latent_dim=3, width=4),
        model=ModelConfig(), batch_size=50, steps=2, verbose=0, image_every=0,
        checkpoint_every=2, **overrides)
    info = data.dataset_info(config.data)
    model, _, _ = training.build_model(config, info, tf.distribute.get_strategy())
    dataset = data.make_dataset(config.data, "train", 50, shuffle=True, repeat=True, seed=0)
    return config, model, dataset


def test_measurement_leaves_the_model_as_it_found_it(tmp_path):
    _, model, dataset = _tiny(tmp_path)
    state = execution._state_variables(model)
    before = [v.numpy().copy() for v in state]
    # One candidate keeps the test fast (an XLA compilation takes tens of seconds here);
    # the restoring does not depend on which modes ran.
    choice = execution.measure_jit_compile(model, dataset, {"device": "CPU"}, steps=2,
                                           candidates={"no_xla": False})
    assert set(choice.seconds_per_step) == {"no_xla"} and not choice.jit_compile
    assert all(t > 0 for t in choice.seconds_per_step.values())
    assert int(model.step.numpy()) == 0
    for variable, value in zip(state, before):
        np.testing.assert_array_equal(variable.numpy(), value)


@pytest.mark.parametrize("timings, expected", [
    ({"no_xla": 0.3, "xla": 0.6}, False),
    ({"no_xla": 0.6, "xla": 0.3}, True),
    ({"no_xla": 0.6}, False),          # XLA failed to compile
])
def test_the_faster_measured_mode_is_chosen(tmp_path, monkeypatch, timings, expected):
    _, model, dataset = _tiny(tmp_path)
    monkeypatch.setattr(execution, "seconds_per_step", lambda *a, **k: dict(timings))
    choice = execution.choose_jit_compile(None, model, dataset, 1, "float32", 50)
    assert choice.jit_compile is expected and choice.seconds_per_step == timings
    if len(timings) == 1:
        assert "xla failed to compile" in choice.reason


def test_forced_reused_and_multi_replica_choices_measure_nothing(tmp_path, monkeypatch):
    _, model, dataset = _tiny(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("measured")
    monkeypatch.setattr(execution, "seconds_per_step", refuse)
    assert execution.choose_jit_compile(True, model, dataset, 1, "float32", 50).jit_compile
    assert not execution.choose_jit_compile(None, model, dataset, 2, "float32", 50).jit_compile
    previous = execution.ExecutionChoice(
        True, {"xla": 0.1, "no_xla": 0.2},
        execution.devices_description(1, "float32", 50), "measured").as_record()
    reused = execution.choose_jit_compile(None, model, dataset, 1, "float32", 50,
                                          previous=json.loads(json.dumps(previous)))
    assert reused.jit_compile and "earlier session" in reused.reason
    # Another batch size (or device, precision) is another measurement.
    monkeypatch.setattr(execution, "seconds_per_step", lambda *a, **k: {"no_xla": 1.0,
                                                                         "xla": 2.0})
    again = execution.choose_jit_compile(None, model, dataset, 1, "float32", 100,
                                         previous=previous)
    assert not again.jit_compile and again.reason == "measured"


def test_a_run_records_its_measured_choice_and_a_resume_reuses_it(tmp_path, monkeypatch):
    calls = []

    def fake(model, dataset, candidates, steps=execution.MEASURED_STEPS):
        calls.append(dict(candidates))
        return {"no_xla": 0.2, "xla": 0.4}
    monkeypatch.setattr(execution, "seconds_per_step", fake)
    config = training.TrainConfig(
        model_dir=str(tmp_path / "run"), data=data.DataConfig(dataset="digits", image_size=8),
        network=networks.NetworkConfig(arch="small", latent_dim=3, width=4),
        batch_size=50, steps=1, verbose=0, image_every=0, checkpoint_every=1)
    training.train(config)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["execution"]["jit_compile"] is False
    assert record["execution"]["seconds_per_step"] == {"no_xla": 0.2, "xla": 0.4}
    training.train(training.dataclasses.replace(config, steps=2))
    assert len(calls) == 1
