"""The start-up choice of XLA and precision: what is measured, restored, recorded, reused.

No test here asserts which mode is faster (that is the machine's, shown by
benchmarks/train_step.py); they check the choice follows the timings it is given.
"""

import json
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest
import tensorflow as tf

from gali_tf import data, execution, networks, training
from gali_tf.errors import ConfigError
from gali_tf.model import GALIModel, ModelConfig

F32, BF16 = "float32", execution.BFLOAT16
# The real device check and measuring process (tests/conftest.py replaces them in every
# test: "no", and the measurement in the test's own process).
_DEVICE_CHECK = execution.has_bfloat16_instructions
_IN_CHILD_PROCESS = execution.in_child_process


def _tiny(tmp_path, policy=F32, **overrides):
    config = training.TrainConfig(
        model_dir=str(tmp_path / "run"), data=data.DataConfig(dataset="digits", image_size=8),
        network=networks.NetworkConfig(arch="small", latent_dim=3, width=4),
        model=ModelConfig(mixed_precision=policy), batch_size=50, steps=2, verbose=0,
        image_every=0, checkpoint_every=2, **overrides)
    info = data.dataset_info(config.data)
    model, _, _ = training.build_model(config, info, tf.distribute.get_strategy())
    dataset = data.make_dataset(config.data, "train", 50, shuffle=True, repeat=True, seed=0)
    return config, model, dataset


def _one_step_run(tmp_path, **overrides):
    """A tiny digits run of one step in tmp_path/run."""
    return training.TrainConfig(
        model_dir=str(tmp_path / "run"), data=data.DataConfig(dataset="digits", image_size=8),
        network=networks.NetworkConfig(arch="small", latent_dim=3, width=4),
        batch_size=50, steps=1, verbose=0, image_every=0, checkpoint_every=1, **overrides)


def _names(*candidates):
    return {execution.Candidate(p, jit).name for p, jit in candidates}


def test_measurement_leaves_every_model_in_the_runs_state(tmp_path):
    _, model, dataset = _tiny(tmp_path)
    _, other, _ = _tiny(tmp_path, BF16)
    # The run's state differs from a fresh build: the copy must come from `model`.
    for variable in model.generator.trainable_variables:
        variable.assign(variable + 0.5)
    state = execution._state_variables(model)
    before = [v.numpy().copy() for v in state]
    # Without XLA only: an XLA compilation takes tens of seconds here, and the restoring
    # does not depend on which modes ran.
    timed = [execution.Candidate(F32, False), execution.Candidate(BF16, False)]
    timings = execution.measure({F32: model, BF16: other}, dataset, timed, steps=2)
    assert set(timings) == _names((F32, False), (BF16, False))
    assert all(t > 0 for t in timings.values())
    for built in (model, other):
        assert int(built.step.numpy()) == 0
        for variable, value in zip(execution._state_variables(built), before):
            np.testing.assert_array_equal(variable.numpy(), value)


@pytest.mark.parametrize("timings, expected", [
    ({"float32/no_xla": 0.3, "float32/xla": 0.6}, (F32, False)),
    ({"float32/no_xla": 0.6, "float32/xla": 0.3}, (F32, True)),
    ({"float32/no_xla": 0.6}, (F32, False)),                    # XLA failed to compile
    # bfloat16 needs BFLOAT16_MIN_SPEEDUP (1.1x) over float32's best mode.
    ({"float32/no_xla": 0.50, "mixed_bfloat16/no_xla": 0.40}, (BF16, False)),
    ({"float32/no_xla": 0.50, "mixed_bfloat16/no_xla": 0.47}, (F32, False)),
    ({"float32/no_xla": 0.50, "float32/xla": 0.9, "mixed_bfloat16/no_xla": 0.6,
      "mixed_bfloat16/xla": 0.3}, (BF16, True)),
    ({"mixed_bfloat16/no_xla": 0.6}, (BF16, False)),            # only bfloat16 ran
])
def test_the_fastest_measured_candidate_is_chosen(timings, expected):
    timed = [execution.Candidate(p, jit) for p in (F32, BF16) for jit in (False, True)]
    best = execution.fastest(timings, timed)
    assert (best.mixed_precision, best.jit_compile) == expected


def test_auto_precision_times_bfloat16_only_where_the_device_has_it(monkeypatch):
    monkeypatch.setattr(execution, "has_bfloat16_instructions", lambda: True)
    assert {c.name for c in execution.candidates(None, "auto")} == _names(
        (F32, False), (F32, True), (BF16, False), (BF16, True))
    assert {c.name for c in execution.candidates(False, "auto")} == _names(
        (F32, False), (BF16, False))
    assert {c.name for c in execution.candidates(None, F32)} == _names((F32, False), (F32, True))
    monkeypatch.setattr(execution, "has_bfloat16_instructions", lambda: False)
    assert {c.name for c in execution.candidates(None, "auto")} == _names((F32, False),
                                                                         (F32, True))


def test_the_device_check_reads_this_machine():
    # Whatever this machine is, the answer is a bool and agrees with /proc/cpuinfo.
    answer = _DEVICE_CHECK()
    assert isinstance(answer, bool)
    if not tf.config.list_physical_devices("GPU"):
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = set(cpuinfo.read().split())
        assert answer == bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def test_forced_reused_and_multi_replica_choices_measure_nothing(tmp_path, monkeypatch):
    _, model, dataset = _tiny(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("measured")
    monkeypatch.setattr(execution, "seconds_per_step", refuse)
    monkeypatch.setattr(execution, "has_bfloat16_instructions", lambda: True)
    forced = execution.choose(True, F32, 1, 50, refuse)
    assert forced.jit_compile and forced.mixed_precision == F32
    several = execution.choose(None, "auto", 2, 50, refuse)
    assert not several.jit_compile and several.mixed_precision == F32
    assert "2 replicas" in several.reason
    previous = execution.ExecutionChoice(
        True, {"float32/xla": 0.3, "mixed_bfloat16/xla": 0.1},
        execution.devices_description(1, "auto", 50), "measured", BF16).as_record()
    reused = execution.choose(None, "auto", 1, 50, refuse,
                              previous=json.loads(json.dumps(previous)))
    assert reused.jit_compile and reused.mixed_precision == BF16
    assert "earlier session" in reused.reason
    # A record from before the precision was measured (keys "xla", "no_xla").
    old = {"jit_compile": False, "seconds_per_step": {"no_xla": 0.2, "xla": 0.4},
           "measured_for": execution.devices_description(1, F32, 50), "reason": "measured"}
    assert execution.choose(None, F32, 1, 50, refuse, previous=old).mixed_precision == F32
    # Another batch size (or device, precision asked) is another measurement.
    again = execution.choose(None, F32, 1, 100, lambda timed: {
        "float32/no_xla": 1.0, "float32/xla": 2.0}, previous=previous)
    assert not again.jit_compile and again.reason == "measured"
    assert "float32/xla 2000 ms/step" in again.summary()
    # A bfloat16 gain under the margin keeps float32, and the reason says why.
    close = execution.choice_from({"float32/no_xla": 0.50, "mixed_bfloat16/no_xla": 0.47},
                                  [execution.Candidate(F32, False),
                                   execution.Candidate(BF16, False)], {})
    assert close.mixed_precision == F32 and "by less than 1.1x" in close.reason


def test_a_measuring_process_that_dies_leaves_xla_off_and_the_next_session_measuring():
    def crash(timed):
        raise BrokenProcessPool("killed")
    choice = execution.choose(None, F32, 1, 50, crash)
    assert not choice.jit_compile and choice.mixed_precision == F32
    assert choice.reason == "not measured: the measuring process failed (BrokenProcessPool)"
    assert choice.seconds_per_step == {}
    assert execution.recorded_choice(choice.as_record(), choice.measured_for) is None


def test_on_a_cpu_the_run_is_measured_in_a_process_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(execution, "in_child_process", _IN_CHILD_PROCESS)
    monkeypatch.setattr(execution, "has_bfloat16_instructions", lambda: True)
    timed_here = []
    monkeypatch.setattr(execution, "seconds_per_step",
                        lambda *args, **kwargs: timed_here.append(args) or {})
    config = _one_step_run(tmp_path, jit_compile=False)
    result = training.train(config)
    # The child timed both precisions (this process's patched timer was not called).
    execution_record = json.loads((tmp_path / "run" / "run.json").read_text())["execution"]
    assert not timed_here and execution_record["reason"].startswith("measured")
    assert set(execution_record["seconds_per_step"]) == _names((F32, False), (BF16, False))
    assert all(t > 0 for t in execution_record["seconds_per_step"].values())
    assert result.step == 1
    assert result.model.encoder.dtype_policy.name == execution_record["mixed_precision"]


def test_a_model_is_built_in_one_policy():
    network = networks.NetworkConfig(arch="small", example_shape=(8, 8, 1), latent_dim=3,
                                     width=4)
    with pytest.raises(ConfigError, match="auto"):
        GALIModel(network, ModelConfig(), 4, total_steps=1, steps_per_epoch=1)


def test_a_run_records_its_measured_choice_and_a_resume_reuses_it(tmp_path, monkeypatch):
    calls = []

    def fake(models, dataset, timed, steps=execution.MEASURED_STEPS):
        calls.append(sorted(models))
        return {"float32/no_xla": 0.2, "float32/xla": 0.4}
    monkeypatch.setattr(execution, "seconds_per_step", fake)
    config = _one_step_run(tmp_path)
    training.train(config)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["execution"]["jit_compile"] is False
    assert record["execution"]["mixed_precision"] == F32
    assert record["execution"]["seconds_per_step"] == {"float32/no_xla": 0.2, "float32/xla": 0.4}
    training.train(training.dataclasses.replace(config, steps=2))
    assert calls == [[F32]]


def test_a_run_trains_in_the_precision_it_measured_fastest(tmp_path, monkeypatch):
    monkeypatch.setattr(execution, "has_bfloat16_instructions", lambda: True)
    calls = []

    def fake(models, dataset, timed, steps=execution.MEASURED_STEPS):
        calls.append(sorted(models))
        # Both models were given the run's state before timing.
        f32, bf16 = models[F32], models[BF16]
        for a, b in zip(f32.generator.weights, bf16.generator.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        return {"float32/no_xla": 0.5, "mixed_bfloat16/no_xla": 0.2}
    monkeypatch.setattr(execution, "seconds_per_step", fake)
    config = _one_step_run(tmp_path, jit_compile=False)
    first = training.train(config)
    assert first.model.encoder.dtype_policy.name == BF16
    assert calls == [[F32, BF16]]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["execution"]["mixed_precision"] == BF16
    # The resume builds in bfloat16 at once and measures nothing; the checkpoint (float32
    # variables) restores into it.
    resumed = training.train(training.dataclasses.replace(config, steps=2))
    assert resumed.step == 2 and resumed.model.encoder.dtype_policy.name == BF16
    assert len(calls) == 1
    # Asked for float32, the same run trains in float32 (a new measurement request).
    forced = training.train(training.dataclasses.replace(
        config, steps=3, model=ModelConfig(mixed_precision=F32)))
    assert forced.step == 3 and forced.model.encoder.dtype_policy.name == F32
