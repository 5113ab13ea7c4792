"""The training engine and trainer: resume, flagfiles, summaries, bad input."""

import dataclasses
import glob
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from gali_tf import data, networks, training
from gali_tf.errors import ConfigError
from gali_tf.model import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ["--image_size=8", "--width=4", "--latent_dim=3", "--batch_size=50",
              "--jit_compile=false", "--mixed_precision=float32",
              "--verbose=0", "--log_every=1", "--image_every=2", "--checkpoint_every=2"]


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
    # --keep_checkpoint_every is off by default: nothing is kept beyond the rolling ones.
    assert not (tmp_path / "checkpoints" / "kept").exists()


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


class _LogsByStep(keras.callbacks.Callback):
    """A caller's callback: keeps each step's Keras logs by the run's step."""

    def __init__(self):
        super().__init__()
        self.logs = {}

    def on_train_batch_end(self, batch, logs=None):
        self.logs[int(self.model.step.numpy())] = {k: float(v) for k, v in logs.items()}


def _scalars(model_dir, tag) -> dict:
    values = {}
    for path in glob.glob(os.path.join(model_dir, "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def test_tensorboard_scalars_are_each_logged_step_s_own_values(tmp_path):
    """train/* holds every --log_every-th step's own value (and the last step's), not
    Keras' running mean over the epoch: the step value is what moves the mean,
    k * mean_k - (k - 1) * mean_(k-1) within an epoch (30 steps of 50 digits here)."""
    recorder = _LogsByStep()
    # A high learning rate, so that successive steps' losses differ clearly.
    training.train(dataclasses.replace(tiny_config(tmp_path, steps=5, learning_rate=0.01),
                                       log_every=2, image_every=0, eval_every=0),
                   callbacks=[recorder])
    logs = recorder.logs
    assert sorted(logs) == [1, 2, 3, 4, 5]
    for name, tag in (("d_loss", "train/d_loss"), ("g_loss", "train/g_loss"),
                      ("p1", "train/p/x,E(x)"), ("p3", "train/p/G(z),z")):
        written = _scalars(tmp_path, tag)
        assert sorted(written) == [2, 4, 5], tag
        for k, value in written.items():
            own = k * logs[k][name] - (k - 1) * logs[k - 1][name]
            assert value == pytest.approx(own, abs=2e-5), (tag, k)
            assert value == pytest.approx(logs[k]["step_" + name], abs=1e-6), (tag, k)
    # Where the running mean and the step's value differ, the step's was written.
    written = _scalars(tmp_path, "train/g_loss")
    assert all(abs(value - logs[k]["g_loss"]) > 1e-3 for k, value in written.items()
               if k > 1), ({k: v - logs[k]["g_loss"] for k, v in written.items()})
    assert not any(t.startswith("train/step_") for t in _tags(tmp_path))


def test_step_values_are_the_global_batch_s_under_a_strategy():
    """Two replicas log what one device logs for the same global batch: each step value
    (as each running mean) is reduced over the replicas, not replica 0's share."""
    from gali_tf.model import GALIModel
    network = networks.NetworkConfig(arch="small", example_shape=(8, 8, 1), latent_dim=3,
                                     width=4)

    def model(**network_options):
        built = GALIModel(dataclasses.replace(network, **network_options),
                          ModelConfig(mixed_precision="float32"), global_batch_size=4, total_steps=1, steps_per_epoch=1)
        built.build()
        built.compile(optimizer=None, jit_compile=False)
        return built

    single = model()
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        mirrored = model(synchronized_bn=True)
    for part in ("encoder", "generator", "discriminator"):
        for source, target in zip(getattr(single, part).weights, getattr(mirrored, part).weights):
            target.assign(source.numpy())
    # Replica 0's half unlike replica 1's: one replica's values would not pass for both.
    x = tf.constant(np.concatenate([np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)),
                                    np.ones((2, 8, 8, 1))]), tf.float32)
    logs = [m.fit(tf.data.Dataset.from_tensors(x).repeat(), steps_per_epoch=1, epochs=1,
                  shuffle=False, verbose=0).history for m in (single, mirrored)]
    assert {"step_d_loss", "step_g_loss", "step_p1", "d_loss"} <= set(logs[0])
    for name, values in logs[0].items():
        assert logs[1][name][-1] == pytest.approx(values[-1], rel=1e-4, abs=1e-5), name


def _checkpoint_steps(directory) -> list:
    from gali_tf import run_dir
    return sorted(run_dir.checkpoint_step(p) for p in run_dir.recorded_checkpoints(
        str(directory))[0])


class _EncoderWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.by_step = {}

    def on_train_batch_end(self, batch, logs=None):
        self.by_step[int(self.model.step.numpy())] = self.model.encoder.get_weights()


def test_keep_checkpoint_every_keeps_its_multiples_past_the_rolling_ones(tmp_path):
    from gali_tf import run_dir
    config = dataclasses.replace(tiny_config(tmp_path, steps=5), checkpoint_every=1,
                                 keep_checkpoints=1, keep_checkpoint_every=2, image_every=0,
                                 eval_every=0, log_every=5)
    weights = _EncoderWeights()
    training.train(config, callbacks=[weights])
    assert _checkpoint_steps(tmp_path / "checkpoints") == [5]
    assert _checkpoint_steps(tmp_path / run_dir.KEPT_CHECKPOINT_DIR) == [2, 4]
    assert sorted(os.path.basename(p) for p in glob.glob(
        str(tmp_path / run_dir.KEPT_CHECKPOINT_DIR / "*.index"))) == [
            "ckpt-2.index", "ckpt-4.index"]
    # Each kept checkpoint restores that step's weights, found by its step.
    for step in (2, 4):
        run = run_dir.restore_networks(str(tmp_path), run_dir.step_checkpoint(str(tmp_path),
                                                                              step))
        assert run.step == step
        for restored, trained in zip(run.encoder.get_weights(), weights.by_step[step]):
            np.testing.assert_array_equal(restored, trained)
    assert run_dir.step_checkpoint(str(tmp_path), 5).endswith("checkpoints/ckpt-5")
    assert run_dir.step_checkpoint(str(tmp_path), 3) is None
    # A resumed session adds its multiples to the kept ones.
    training.train(dataclasses.replace(config, steps=7))
    assert _checkpoint_steps(tmp_path / "checkpoints") == [7]
    assert _checkpoint_steps(tmp_path / run_dir.KEPT_CHECKPOINT_DIR) == [2, 4, 6]


def test_keep_checkpoint_every_keeps_the_step_after_a_multiple_jumped_over(tmp_path):
    """Two steps per execution reach steps 2, 4, 6: the multiple 3 is never a batch end,
    so step 4 is kept for it, then 6."""
    from gali_tf import run_dir
    config = dataclasses.replace(tiny_config(tmp_path, steps=6), steps_per_execution=2,
                                 keep_checkpoint_every=3, image_every=0, eval_every=0,
                                 log_every=6)
    training.train(config)
    assert _checkpoint_steps(tmp_path / run_dir.KEPT_CHECKPOINT_DIR) == [4, 6]


def test_a_kept_step_retrained_after_resuming_from_before_it_is_kept_anew(tmp_path):
    from gali_tf import run_dir
    config = dataclasses.replace(tiny_config(tmp_path, steps=2), checkpoint_every=1,
                                 keep_checkpoints=3, keep_checkpoint_every=2, image_every=0,
                                 eval_every=0, log_every=2)
    kept, rolling = (str(tmp_path / run_dir.KEPT_CHECKPOINT_DIR / "ckpt-2"),
                     str(tmp_path / "checkpoints" / "ckpt-2"))

    def encoder(path):
        return run_dir.restore_networks(str(tmp_path), path).encoder.get_weights()

    training.train(config)
    before = encoder(kept)
    # As if the trainer died after keeping step 2 but before its rolling save.
    run_dir.rewrite_checkpoint_state(str(tmp_path / "checkpoints"),
                                     [str(tmp_path / "checkpoints" / "ckpt-1")])
    training.train(config)   # step 2 again, on other data (reshuffled from step 1)
    assert _checkpoint_steps(tmp_path / run_dir.KEPT_CHECKPOINT_DIR) == [2]
    now = encoder(kept)
    for weight, retrained in zip(now, encoder(rolling)):
        np.testing.assert_array_equal(weight, retrained)
    assert any(not np.array_equal(n, b) for n, b in zip(now, before))


def test_a_negative_keep_checkpoint_every_is_refused_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="^--keep_checkpoint_every=-1: expected >= 0"):
        training.train(dataclasses.replace(tiny_config(tmp_path / "run"),
                                           keep_checkpoint_every=-1))
    assert not (tmp_path / "run").exists()


class _Steps(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(int(self.model.step.numpy()))


def test_the_python_api_trains_on_the_caller_s_array_with_its_callbacks(tmp_path):
    import gali_tf
    from gali_tf import run_dir
    images = np.random.default_rng(0).integers(0, 256, size=(120, 8, 8, 3), dtype=np.uint8)
    # config.data names a dataset that is not prepared here: it is not read.
    config = dataclasses.replace(tiny_config(tmp_path, steps=2), image_every=1,
                                 data=data.DataConfig(dataset="svhn_cropped"))
    steps = _Steps()
    result = gali_tf.train(config, dataset=images, callbacks=[steps])
    assert result.step == 2 and steps.steps == [1, 2] and result.test_pixel_mse is None
    record = run_dir.read_run_record(str(tmp_path))
    assert record.dataset == training.CALLER_DATA == "caller"
    assert record.example_shape == (8, 8, 3)
    assert record.training["dataset"] == "caller" and record.training["channels"] == 3
    assert "samples" in _tags(tmp_path)
    # The same data again resumes the run; its checkpoints restore.
    resumed = gali_tf.train(dataclasses.replace(config, steps=3), dataset=images,
                            callbacks=[steps])
    assert resumed.step == 3 and steps.steps == [1, 2, 3]
    run = gali_tf.restore(str(tmp_path))
    assert run.step == 3 and run.generator(tf.zeros([1, 3])).shape == (1, 8, 8, 3)
    # Resuming on a configured source instead is training on other data: refused.
    digits = data.DataConfig(dataset="digits", image_size=8, channels=3)
    with pytest.raises(ConfigError, match="--dataset='caller' .now 'digits'."):
        gali_tf.train(dataclasses.replace(config, steps=4, data=digits))
    # The evaluation tools read the run's data, which the run does not keep: one line.
    from gali_tf.evaluation import suite
    with pytest.raises(data.DataError, match=r"^--dataset=caller: the run was trained on "
                       r"images passed to gali_tf.train\(dataset=...\)"):
        suite.evaluate_run(str(tmp_path), suite.EvalConfig(fid_cache_dir=""))


def test_the_python_api_trains_on_the_caller_s_batched_float_dataset(tmp_path):
    import gali_tf
    images = np.random.default_rng(0).uniform(-1, 1, size=(130, 8, 8, 1)).astype(np.float32)
    # Batches of another size are re-batched by --batch_size (x --n_dis); the unknown
    # length is counted: 130 images, one step of 2 x 50 per epoch.
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(7)
    config = dataclasses.replace(
        tiny_config(tmp_path, steps=2, tuples="ali", n_dis=2), image_every=0,
        data=data.DataConfig(image_size=8, channels=1))
    result = gali_tf.train(config, dataset=dataset)
    assert result.step == 2 and result.model.steps_per_epoch == 1
    assert result.model.network_config.example_shape == (8, 8, 1)


CALLER_DATA_ERRORS = [
    (np.zeros((4, 8, 8), np.uint8), {}, r"an array of shape \[4, 8, 8\]; expected images "
                                        r"\[N, H, W, C\]"),
    (np.zeros((4, 8, 8, 3), np.uint8), {"image_size": 16},
     r"images of shape \[8, 8, 3\]; expected \[16, 16, 3\] \(config.data's image_size=16\)"),
    (np.zeros((4, 8, 8, 3), np.uint8), {"channels": 1},
     r"images of shape \[8, 8, 3\]; expected \[8, 8, 1\] \(config.data's channels=1\)"),
    (np.zeros((4, 8, 4, 3), np.uint8), {},
     r"images of shape \[8, 4, 3\]; expected \[8, 8, 3\] \(square images\)"),
    (np.full((4, 8, 8, 3), 255.0, np.float32), {},
     r"float images with values in \[255, 255\] \(the array\); expected \[-1, 1\], "
     r"or uint8 for 0..255"),
    (np.zeros((4, 8, 8, 3), np.int32), {},
     r"int32 images; expected uint8 \(0..255\) or floats in \[-1, 1\]"),
    ([[0.0]], {}, r"a list; expected a tf.data.Dataset or a numpy array of images"),
]


@pytest.mark.parametrize("images, data_options, expected", CALLER_DATA_ERRORS)
def test_the_caller_s_data_is_checked_in_one_line(images, data_options, expected):
    with pytest.raises(ConfigError, match=r"^train\(dataset=...\): " + expected + "$") as error:
        training.caller_data(images, data.DataConfig(**data_options))
    assert "\n" not in str(error.value)


def test_the_caller_s_dataset_is_checked_in_one_line(tmp_path, capsys):
    image = tf.zeros([8, 8, 3], tf.uint8)
    for dataset, expected in [
            (tf.data.Dataset.from_tensors((image, 0)), "without labels"),
            (tf.data.Dataset.from_tensors(image).repeat(), "an endless dataset"),
            (tf.data.Dataset.from_tensors(image).take(0), "an empty dataset")]:
        with pytest.raises(ConfigError, match=expected):
            training.caller_data(dataset, data.DataConfig())
    # Labels need config.data; nothing is written before the data is checked.
    with pytest.raises(ConfigError, match="takes unlabelled images"):
        training.train(tiny_config(tmp_path / "a", conditional=True),
                       dataset=np.zeros((4, 8, 8, 1), np.uint8))
    with pytest.raises(ConfigError, match=r"expected \[8, 8, 1\]"):
        training.train(dataclasses.replace(tiny_config(tmp_path / "b"), data=data.DataConfig(
            image_size=8, channels=1)), dataset=np.zeros((4, 8, 8, 3), np.uint8))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # Floats in [0, 1] are in range but suspect: a warning line.
    caller = training.caller_data(tf.data.Dataset.from_tensors(tf.fill([8, 8, 1], 0.5)),
                                  data.DataConfig())
    assert caller.info.num_train == 1
    assert "images in [0, 1]?" in capsys.readouterr().err
