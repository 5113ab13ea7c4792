"""The training engine and trainer: resume, flagfiles, summaries, bad input."""

import dataclasses
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from gali_tf import data, networks, training
from gali_tf.errors import ConfigError
from gali_tf.model import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ["--image_size=8", "--width=4", "--latent_dim=3", "--batch_size=50",
              "--jit_compile=false", "--verbose=0", "--log_every=1", "--image_every=2", "--checkpoint_every=2"]


def tiny_config(model_dir, steps=3, **model_options):
    return training.TrainConfig(
        model_dir=str(model_dir), data=data.DataConfig(dataset="digits", image_size=8),
        network=networks.NetworkConfig(arch="small", latent_dim=3, width=4),
        model=ModelConfig(**model_options), batch_size=50, steps=steps, verbose=0,
        jit_compile=False,
        log_every=1, image_every=2, checkpoint_every=2)


def test_resume_continues_the_step_count(tmp_path):
    first = training.train(tiny_config(tmp_path, steps=3))
    assert first.step == 3 and first.test_pixel_mse is not None
    assert os.path.basename(tf.train.latest_checkpoint(tmp_path / "checkpoints")) == "ckpt-3"
    again = training.train(tiny_config(tmp_path, steps=3))   # already done: no more steps
    assert again.step == 3
    resumed = training.train(tiny_config(tmp_path, steps=5))
    assert resumed.step == 5
    assert os.path.basename(tf.train.latest_checkpoint(tmp_path / "checkpoints")) == "ckpt-5"


def test_progress_is_one_display_over_the_run_s_total_steps(tmp_path, capsys):
    training.train(dataclasses.replace(tiny_config(tmp_path, steps=4), verbose=2))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    # A line per 5% of 4 steps (every step here), each over the total, not per epoch.
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert "images/s ETA" in lines[0] and " d_loss " in lines[0] and " g_loss " in lines[0]
    assert lines[-1].startswith("step 4/4 [====================] 100% ")
    # A resumed run starts at its step.
    training.train(dataclasses.replace(tiny_config(tmp_path, steps=6), verbose=2))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["5/6", "6/6"]


def test_the_progress_line_shows_step_rate_eta_and_losses():
    from gali_tf.callbacks import progress_line
    assert progress_line(450, 3000, 1043.4, 243.0, {"d_loss": 1.23456, "g_loss": 2.5}) == (
        "step 450/3000 [==>                 ]  15% 1043 images/s ETA 4:03 "
        "d_loss 1.235 g_loss 2.5")
    assert "ETA 1:02:03" in progress_line(1, 2, 1.0, 3723.0, {})
    assert "ETA --:--" in progress_line(0, 2, 0.0, float("inf"), {})


def test_test_mse_is_a_curve_while_it_trains(tmp_path):
    training.train(dataclasses.replace(tiny_config(tmp_path, steps=5), eval_every=2))
    steps = []
    for path in glob.glob(os.path.join(tmp_path, "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            steps += [event.step for v in event.summary.value if v.tag == "test/pixel_mse"]
    assert sorted(steps) == [2, 4, 5]   # every 2 steps, and at the end


def _tags(model_dir):
    tags = set()
    for path in glob.glob(os.path.join(model_dir, "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    return tags


def test_trainer_from_flagfile_writes_flags_events_and_checkpoints(tmp_path):
    model_dir = tmp_path / "run"
    command = [sys.executable, "-m", "trainers.main", "--flagfile=configs/digits_gali4.flags",
               f"--model_dir={model_dir}", "--steps=2", *TINY_FLAGS]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test pixel MSE" in done.stdout
    flags_text = (model_dir / "flags.txt").read_text()
    assert "--tuples=gali4" in flags_text and "--steps=2" in flags_text
    assert tf.train.latest_checkpoint(model_dir / "checkpoints").endswith("ckpt-2")
    tags = _tags(model_dir)
    # Each class's mean D probability is named by its tuple class.
    assert {"train/d_loss", "train/g_loss", "train/p/x,E(x)", "train/p/x,E(G(E(x)))",
            "train/p/G(z),z", "train/p/G(E(G(z))),z", "samples", "reconstructions",
            "test/pixel_mse"} <= tags
    assert not any(tag.startswith("train/p1") for tag in tags)
    # The flags as text and the training flags as hparams, for TensorBoard's tabs.
    assert {"flags", "_hparams_/session_start_info"} <= tags
    # flags.txt is itself a flagfile: running it again with more steps resumes.
    again = subprocess.run([sys.executable, "-m", "trainers.main", f"--flagfile={model_dir}/flags.txt",
                            "--steps=3"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert tf.train.latest_checkpoint(model_dir / "checkpoints").endswith("ckpt-3")


BAD_INPUT = [
    (["--tuples=gali5"], "--tuples='gali5': unknown tuple set"),
    (["--tuples=x, E(x); G(z"], "--tuples entry"),
    (["--dataset=folder", "--image_dir=/nonexistent/images"], "--image_dir=/nonexistent/images"),
    (["--dataset=svhn_cropped", "--data_dir={tmp}/tfds", "--image_size=32"], "not prepared"),
    (["--arch=svhn32"], "--arch=svhn32 needs 32x32 images"),
]


@pytest.mark.parametrize("args, expected", BAD_INPUT)
def test_trainer_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, trainer_flags,
                                                          args, expected):
    model_dir = tmp_path / "run"
    args = [a.format(tmp=tmp_path) for a in args]
    trainer = trainer_flags([f"--model_dir={model_dir}", *TINY_FLAGS, *args])
    with pytest.raises(SystemExit) as exit_info:
        trainer.main(["trainers.main"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], stderr[-2000:]
    assert not model_dir.exists()


def test_trainer_process_exits_2_with_one_error_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "trainers.main", f"--model_dir={tmp_path}/run",
                           "--tuples=x, E(x); E(x), x"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: --tuples=")
    assert not (tmp_path / "run").exists()


def test_other_architecture_in_model_dir_is_refused_before_writing(tmp_path):
    training.train(tiny_config(tmp_path, steps=1))
    flags_before = (tmp_path / "run.json").read_text()
    wider = dataclasses.replace(tiny_config(tmp_path, steps=2),
                                network=networks.NetworkConfig(arch="small", latent_dim=3, width=8))
    with pytest.raises(ConfigError, match="width=4 .now 8."):
        training.train(wider)
    # Without the run record, restoring the checkpoint itself catches the mismatch.
    os.remove(tmp_path / "run.json")
    with pytest.raises(ConfigError, match="does not match this model's architecture"):
        training.train(wider)
    assert tf.train.latest_checkpoint(tmp_path / "checkpoints").endswith("ckpt-1")
    assert flags_before  # the first run's record was a complete file


def test_model_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        training.train(tiny_config(path))


def test_toy_mixture_trains_with_the_mlp_set(tmp_path):
    config = training.TrainConfig(
        model_dir=str(tmp_path), data=data.DataConfig(dataset="toy25"),
        network=networks.NetworkConfig(arch="mlp", latent_dim=2, mlp_hidden=16),
        model=ModelConfig(tuples="ali", instance_noise=0.0), batch_size=20, steps=2, verbose=0,
        jit_compile=False)
    result = training.train(config)
    assert result.step == 2 and result.test_pixel_mse is None


def test_seed_fixes_the_initial_weights():
    """--seed reproduces a run's initial weights and another seed changes them, so the
    experiment tables' seeds 0..k are reproducible samples of the run-to-run spread."""
    info = data.dataset_info(data.DataConfig(dataset="digits", image_size=8))

    def initial_kernel(seed):
        config = training.TrainConfig(
            model_dir="unused", data=data.DataConfig(dataset="digits", image_size=8),
            network=networks.NetworkConfig(arch="small", latent_dim=3, width=4),
            model=ModelConfig(tuples="ali", seed=seed))
        model, _, _ = training.build_model(config, info, tf.distribute.get_strategy())
        return model.encoder.trainable_variables[0].numpy()

    np.testing.assert_array_equal(initial_kernel(0), initial_kernel(0))
    assert not np.array_equal(initial_kernel(0), initial_kernel(1))


def test_trainer_defaults_are_the_library_defaults(trainer_flags):
    """Each flag's default is the config field of its name: the trainer's default run and
    a TrainConfig built in a notebook train the same model."""
    config = trainer_flags([]).config_from_flags()
    library = training.TrainConfig(model_dir=config.model_dir)
    assert config == library
    assert config.model_dir == "runs/digits_gali4" and config.network.width == 16


def test_the_python_api_trains_and_restores_a_run(tmp_path):
    import gali_tf
    assert gali_tf.train is training.train and gali_tf.ModelConfig is ModelConfig
    result = gali_tf.train(gali_tf.TrainConfig(
        model_dir=str(tmp_path / "notebook"), data=gali_tf.DataConfig(dataset="digits",
                                                                      image_size=8),
        network=gali_tf.NetworkConfig(arch="small", latent_dim=3, width=4),
        model=gali_tf.ModelConfig(tuples="gali4"), batch_size=50, steps=2, verbose=0,
        jit_compile=False, image_every=0))
    assert result.step == 2 and result.test_pixel_mse is not None
    run = gali_tf.restore(str(tmp_path / "notebook"))
    assert run.step == 2 and run.record.tuples == "gali4"
    assert run.generator(tf.zeros([1, 3]), training=False).shape == (1, 8, 8, 1)
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        gali_tf.trian  # pylint: disable=pointless-statement
