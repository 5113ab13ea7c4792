"""Faults users meet, each with the one line the tools answer and what they keep.

Refused faults exit with status 2 and exactly one `error:` line that names the flag or
file; recovered faults go on with a `warning:` line. Each case first trains a tiny run
where it needs one (a few steps, width 4), in-process through trainers.main.main.
"""

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from gali_tf import run_dir, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--image_size=8", "--width=4", "--latent_dim=3", "--batch_size=50",
        "--jit_compile=false", "--mixed_precision=float32",
        "--verbose=0", "--log_every=1", "--image_every=0",
        "--checkpoint_every=2"]


def _main(trainer_flags, capsys, args):
    """Runs trainers.main in-process; returns (exit status, stdout, stderr)."""
    trainer = trainer_flags([*TINY, *args])
    code = 0
    try:
        trainer.main(["trainers.main"])
    except SystemExit as exit_info:
        code = exit_info.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _train(trainer_flags, capsys, model_dir, steps=4, *args):
    code, _, err = _main(trainer_flags, capsys, [f"--model_dir={model_dir}",
                                                 f"--steps={steps}", *args])
    assert code == 0, err[-2000:]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny run of 4 steps (ckpt-2, ckpt-4), trained once; each test copies it."""
    from absl import flags
    from trainers import main as trainer
    trainer.define_flags()
    model_dir = tmp_path_factory.mktemp("base") / "run"
    saved = flags.FLAGS.flag_values_dict()
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["trainers.main", *TINY, f"--model_dir={model_dir}", "--steps=4"])
    try:
        trainer.main(["trainers.main"])
    finally:
        flags.FLAGS.unparse_flags()
        for name, value in saved.items():
            setattr(flags.FLAGS, name, value)
    return model_dir


def _copy_of(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    # The state file names checkpoints relative to its directory: the copy is a run of
    # its own (and nobody holds its copied lock file).
    return run


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def _truncate_data(model_dir, step):
    """What a full disk or an interrupted copy leaves: a data file cut short."""
    data_files = tf.io.gfile.glob(f"{model_dir}/checkpoints/ckpt-{step}.data-*")
    assert data_files
    for path in data_files:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)


def _hold_lock(model_dir):
    os.makedirs(model_dir, exist_ok=True)
    return run_dir.TrainerLock(str(model_dir)).acquire()


def _full_disk(monkeypatch):
    """CheckpointManager.save as on a full disk: a _temp directory, then ENOSPC."""
    def save(manager, checkpoint_number=None, **kwargs):
        os.makedirs(f"{manager.directory}/ckpt-{checkpoint_number}_temp", exist_ok=True)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                      f"{manager.directory}/ckpt-{checkpoint_number}_temp/part-00000")
    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)


# (name, set-up(run, monkeypatch) -> anything kept alive, trainer arguments, expected text
# of the one error line). {run} in arguments is the run directory.
REFUSED = [
    ("diverged", None, ["--steps=30", "--learning_rate=1e6", "--checkpoint_every=3"],
     "training diverged"),
    ("in use by another trainer", lambda run, mp: _hold_lock(run), ["--steps=2"],
     "is in use by another trainer (pid"),
    ("changed training flag", "train first", ["--steps=6", "--learning_rate=0.001"],
     "was trained with other flags: --learning_rate=0.0002 (now 0.001); pass "
     "--allow_flag_changes"),
    ("every checkpoint truncated",
     lambda run, mp: [_truncate_data(run, s) for s in (2, 4)], ["--steps=6"],
     "none of the checkpoints"),
    ("corrupt run.json", lambda run, mp: (run / "run.json").write_text("{\"arch\": "),
     ["--steps=6"], "run.json is not valid JSON"),
    ("disk full", lambda run, mp: _full_disk(mp), ["--steps=6"],
     "cannot write (No space left on device"),
    ("model_dir under a file", lambda run, mp: None,
     ["--model_dir={run}/flags.txt/sub", "--steps=2"],
     "cannot create it"),
    ("steps and epochs zero", None, ["--steps=0", "--epochs=0"],
     "--steps=0 --epochs=0: expected a number of steps > 0"),
    ("empty model_dir", None, ["--model_dir=", "--steps=2"], "--model_dir is empty"),
]


@pytest.mark.parametrize("name, setup, args, expected", REFUSED, ids=[c[0] for c in REFUSED])
def test_trainer_fault_is_one_line_and_keeps_the_run(tmp_path, capsys, monkeypatch,
                                                     trainer_flags, trained_run, name, setup,
                                                     args, expected):
    run = tmp_path / "run"
    alive = []   # what a set-up holds (a lock) must live while the trainer runs
    if setup is not None:
        _copy_of(trained_run, tmp_path)              # ckpt-2 and ckpt-4
        if callable(setup):
            alive.append(setup(run, monkeypatch))
    before = sorted(os.listdir(run / "checkpoints")) if (run / "checkpoints").exists() else []
    args = [a.format(run=run) for a in args]
    if not any(a.startswith("--model_dir") for a in args):
        args.append(f"--model_dir={run}")
    code, out, err = _main(trainer_flags, capsys, args)
    errors = _error_lines(err)
    assert code == 2 and len(errors) == 1 and expected in errors[0], (code, err[-3000:])
    assert "Traceback" not in err
    if before:
        # Nothing of the run is lost, and no failed save is left behind.
        after = sorted(os.listdir(run / "checkpoints"))
        assert set(before) - {"checkpoint"} <= set(after) and not [
            p for p in after if p.endswith("_temp")], (before, after)
    if name == "diverged":
        # Every checkpoint that remains is finite; the run's newest finite one is named.
        for path in run_dir.recorded_checkpoints(str(run / "checkpoints"))[0]:
            assert run_dir.checkpoint_problem(path) is None
        assert "step " in errors[0] and ("ckpt-" in errors[0] or "no checkpoint" in errors[0])


def test_a_stale_lock_of_a_dead_trainer_is_taken_over(tmp_path, capsys, trainer_flags):
    run = tmp_path / "run"
    run.mkdir()
    # A crashed trainer leaves the file; the kernel dropped its flock with the process.
    (run / run_dir.LOCK_FILE).write_text("pid 999999 on elsewhere since 2026-01-01\n")
    _train(trainer_flags, capsys, run, 2)
    assert f"pid {os.getpid()}" in (run / run_dir.LOCK_FILE).read_text()


def test_truncated_newest_checkpoint_is_skipped_in_training_evaluation_and_export(
        tmp_path, capsys, trainer_flags, trained_run):
    run = _copy_of(trained_run, tmp_path)
    _truncate_data(run, 4)
    restored = run_dir.restore_networks(str(run))
    assert restored.step == 2
    assert "checkpoint" in capsys.readouterr().err
    code, _, err = _main(trainer_flags, capsys, [f"--model_dir={run}", "--steps=6"])
    assert code == 0, err[-2000:]
    assert any(line.startswith("warning: checkpoint") and "ckpt-4 is skipped: its files are "
               "incomplete or unreadable" in line for line in err.splitlines()), err[-2000:]
    # Resumed from step 2; step 4 was trained again and saved whole, and the state file
    # still names ckpt-2 (a later fall-back can reach it).
    recorded = run_dir.recorded_checkpoints(str(run / "checkpoints"))[0]
    assert [os.path.basename(p) for p in recorded] == ["ckpt-6", "ckpt-4", "ckpt-2"]
    assert run_dir.checkpoint_problem(str(run / "checkpoints" / "ckpt-4")) is None


def test_unreadable_checkpoint_state_file_resumes_from_the_files_on_disk(
        tmp_path, capsys, trainer_flags, trained_run):
    run = _copy_of(trained_run, tmp_path)
    (run / "checkpoints" / "checkpoint").write_text("model_checkpoint_path: \"ckpt-4\n{{{")
    code, out, err = _main(trainer_flags, capsys, [f"--model_dir={run}", "--steps=6",
                                                   "--verbose=1"])
    assert code == 0, err[-2000:]
    assert "is unreadable" in err and "resuming from ckpt-4 (step 4)" in out
    recorded = run_dir.recorded_checkpoints(str(run / "checkpoints"))[0]
    assert [os.path.basename(p) for p in recorded] == ["ckpt-6", "ckpt-4", "ckpt-2"]


def test_allowed_flag_change_takes_effect_and_is_recorded(tmp_path, capsys, trainer_flags,
                                                          trained_run):
    run = _copy_of(trained_run, tmp_path)
    code, _, err = _main(trainer_flags, capsys, [f"--model_dir={run}", "--steps=6",
                                                 "--learning_rate=0.001", "--seed=3",
                                                 "--allow_flag_changes"])
    assert code == 0, err[-2000:]
    record = json.loads((run / "run.json").read_text())
    assert record["training"]["learning_rate"] == 0.001 and record["training"]["seed"] == 3
    history = [json.loads(line) for line in (run / "flags_history.jsonl").read_text().splitlines()]
    assert [h["start_step"] for h in history] == [0, 4]
    assert history[1]["changed"] == {"learning_rate": {"was": 0.0002, "now": 0.001},
                                     "seed": {"was": 0, "now": 3}}
    assert "--allow_flag_changes" not in (run / "flags.txt").read_text()
    # The restored optimizers train with the new rate, not the checkpointed one.
    reader = tf.train.load_checkpoint(str(run / "checkpoints" / "ckpt-6"))
    rates = [reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
             if "learning_rate" in name]
    assert rates and all(abs(float(r) - 0.001) < 1e-9 for r in rates), rates


def test_resume_with_a_relative_model_dir_from_another_working_directory(
        tmp_path, capsys, monkeypatch, trainer_flags):
    monkeypatch.chdir(tmp_path)
    _train(trainer_flags, capsys, "runs/rel", 2)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out, err = _main(trainer_flags, capsys, ["--model_dir=../runs/rel", "--steps=4",
                                                   "--verbose=1"])
    assert code == 0, err[-2000:]
    assert "resuming from ckpt-2 (step 2)" in out


def test_export_and_evaluation_refuse_a_diverged_checkpoint(tmp_path, trained_run):
    run = _copy_of(trained_run, tmp_path)
    restored = run_dir.restore_networks(str(run))
    variable = restored.encoder.trainable_variables[0]
    variable.assign(tf.fill(variable.shape, float("nan")))
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(encoder=restored.encoder, generator=restored.generator),
        str(run / "checkpoints"), max_to_keep=5)
    manager.save(checkpoint_number=5)
    with pytest.raises(training.ConfigError, match=r"ckpt-5 cannot be used: it holds "
                       r"non-finite weights \(1 tensors"):
        run_dir.restore_networks(str(run))


@pytest.mark.parametrize("module, args, expected", [
    ("trainers.main", ["--lerning_rate=1"], "Unknown command line flag 'lerning_rate'"),
    ("export.main", ["--model_dir=x", "stray"], "unexpected arguments: stray"),
])
def test_flag_errors_are_one_line_with_status_2(module, args, expected):
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    errors = _error_lines(done.stderr)
    assert done.returncode == 2 and len(errors) == 1 and expected in errors[0], done.stderr
    assert "FATAL" not in done.stderr and "Traceback" not in done.stderr
