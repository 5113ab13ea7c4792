"""Inpainting metrics and the trainers.inpaint tool (grids, bad input)."""

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from gali_tf import data, inpaint, masks, networks, training
from gali_tf.evaluation import inpainting
from gali_tf.errors import ConfigError
from gali_tf.model import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (2, 6, 6, 3)


def _batches(n=3):
    return [tf.random.stateless_uniform(SHAPE, [i, 0], -1, 1) for i in range(n)]


def test_metric_is_zero_for_a_perfect_inpainter():
    batch = _batches(1)[0]
    batches = [batch] * 3              # the inpainter knows the image behind the hole

    def perfect(masked):
        return batch

    result = inpainting.evaluate(perfect, tf.data.Dataset.from_tensor_slices(batches), fill=-1.0,
                                 feature_fn=lambda im: tf.reshape(im, [im.shape[0], -1]))
    assert result.pixel_mse.mean == 0 and result.pixel_mse.std == 0
    assert result.feature_mse.mean == 0 and result.pixel_mse.num_batches == 3


def test_metric_of_a_constant_inpainter_matches_the_hand_computation():
    batches = _batches()
    result = inpainting.evaluate(lambda masked: tf.zeros_like(masked),   # grey, 0.5 in [0, 1]
                                 tf.data.Dataset.from_tensor_slices(batches), fill=-1.0, seed=4)
    sums, counts, per_batch = 0.0, 0.0, []
    for i, x in enumerate(batches):
        hole = inpainting.eval_masks(SHAPE, i, seed=4).numpy()       # [2, 6, 6, 1]
        squared = (((x.numpy() + 1) / 2 - 0.5) ** 2) * hole
        sums += squared.sum()
        counts += hole.sum() * 3
        per_batch.append(squared.sum() / (hole.sum() * 3))
    np.testing.assert_allclose(result.pixel_mse.mean, sums / counts, rtol=1e-5)
    np.testing.assert_allclose(result.pixel_mse.std, np.std(per_batch), rtol=1e-4)
    # The same seed gives the same masks: comparable between models.
    again = inpainting.evaluate(lambda m: tf.zeros_like(m),
                                tf.data.Dataset.from_tensor_slices(batches), fill=-1.0, seed=4)
    assert again.pixel_mse.mean == result.pixel_mse.mean


def test_triplet_grid_layout():
    x = tf.zeros([4, 6, 5, 1]) - 1.0
    grid = inpainting.triplet_grid(x, x * 0, x * 0 + 1, columns=2)
    assert grid.shape == (1, 2 * 6, 6 * 5, 1)
    np.testing.assert_array_equal(grid[0, :, :5].numpy(), 0.0)     # originals: black
    np.testing.assert_array_equal(grid[0, :, 10:15].numpy(), 1.0)  # inpainted: white


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run")
    training.train(training.TrainConfig(
        model_dir=str(model_dir), data=data.DataConfig(dataset="digits", image_size=8),
        network=networks.NetworkConfig(arch="small", latent_dim=3, width=4),
        model=ModelConfig(tuples="gali_mix", mask_fill=0.0), batch_size=50, steps=1,
        verbose=0, jit_compile=False, image_every=1, checkpoint_every=1))
    return model_dir


def test_training_writes_inpainting_summaries(run_dir):
    tags = set()
    for path in tf.io.gfile.glob(os.path.join(run_dir, "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    assert "inpainting" in tags


def test_tool_on_dataset_images_writes_grid_and_metrics(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    result = inpaint.inpaint_run(inpaint.InpaintOptions(
        model_dir=str(run_dir), out=str(out), dataset="digits", num_images=5, metrics=True))
    files = sorted(os.listdir(out))
    assert "grid.png" in files and len(files) == 6
    grid = tf.io.decode_png(tf.io.read_file(str(out / "grid.png")))
    assert grid.shape == (5 * 64, 3 * 64, 1)   # 8x8 images shown at 64x64
    assert "inpainting pixel MSE (hole, images in [0, 1]): " in capsys.readouterr().out
    assert 0 < result.pixel_mse.mean < 1


def test_tool_on_image_files_with_a_fixed_box(run_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a", "b"):
        pixels = np.random.default_rng(0).integers(0, 255, (20, 12, 3), dtype=np.uint8)
        tf.io.write_file(str(folder / f"{name}.png"), tf.io.encode_png(pixels))
    out = tmp_path / "out"
    inpaint.inpaint_run(inpaint.InpaintOptions(
        model_dir=str(run_dir), out=str(out), images=str(folder / "*.png"), mask="2,1,4,3"))
    assert sorted(os.listdir(out)) == ["a_inpainted.png", "b_inpainted.png", "grid.png"]
    composite = tf.io.decode_png(tf.io.read_file(str(out / "a_inpainted.png"))).numpy()
    assert composite.shape == (8, 8, 1)


def test_tool_reads_webp_files_as_the_folder_pipeline_does(tmp_path):
    """An RGBA and an animated WebP (TensorFlow's decoder refuses the first and corrupts
    memory on the second) come out as their first frame's RGB, the pixels Pillow reads;
    a damaged one is a one-line error naming it."""
    Image = pytest.importorskip("PIL.Image")
    features = pytest.importorskip("PIL.features")
    if not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 255, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.webp", lossless=True)
    frames = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
              for _ in range(2)]
    frames[0].save(tmp_path / "b.webp", save_all=True, append_images=frames[1:],
                   lossless=True)
    images, names = inpaint.load_images(str(tmp_path / "*.webp"), (8, 8, 3))
    assert names == ["a", "b"]
    np.testing.assert_allclose(images[0].numpy(),
                               data.images_from_uint8(tf.constant(rgba[..., :3]), 8, 8, 3),
                               atol=1e-6)
    np.testing.assert_allclose(images[1].numpy(), data.images_from_uint8(
        tf.constant(np.asarray(frames[0])), 8, 8, 3), atol=1e-6)
    (tmp_path / "c.webp").write_bytes((tmp_path / "a.webp").read_bytes()[:30])
    with pytest.raises(ConfigError, match=r"^--images: cannot read .*c\.webp as an image"):
        inpaint.load_images(str(tmp_path / "*.webp"), (8, 8, 3))


@pytest.mark.parametrize("options, expected", [
    (dict(images="/nonexistent/*.png"), "--images=/nonexistent/*.png: no files match"),
    (dict(images="{tmp}/bad.png"), "cannot read"),
    (dict(dataset="digits", mask="1,2,3"), "--mask=1,2,3: expected x,y,w,h"),
    (dict(dataset="digits", mask="a,b,c,d"), "expected x,y,w,h"),
    (dict(dataset="digits", mask="4,0,5,2"), "not inside the 8x8 image"),
    (dict(dataset="digits", mask="0,0,0,2"), "not inside"),
    (dict(dataset="digits", model_dir="{tmp}/none"), "no run.json"),
    (dict(dataset="digits", mask_fill=3.0), "--mask_fill=3.0"),
])
def test_tool_bad_input_is_one_line(run_dir, tmp_path, options, expected):
    (tmp_path / "bad.png").write_text("not an image")
    options = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in options.items()}
    options = {"model_dir": str(run_dir), "out": str(tmp_path / "out"), **options}
    with pytest.raises(ConfigError) as info:
        inpaint.inpaint_run(inpaint.InpaintOptions(**options))
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_tool_process_exits_2_with_one_error_line(run_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "trainers.inpaint", f"--model_dir={run_dir}",
                           "--dataset=digits", "--mask=0,0,9,9", f"--out={tmp_path}/out"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: --mask=0,0,9,9")


def _a_file(tmp):
    return tmp / "a_file", f"--out={tmp}/a_file is a file: expected a directory for the PNGs"


def _under_a_file(tmp):
    return tmp / "a_file" / "out", (f"--out={tmp}/a_file/out is under a file ({tmp}/a_file): "
                                    "expected a directory for the PNGs")


def _read_only(tmp):
    folder = tmp / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").write_text("")
    except OSError:
        return folder / "out", (f"--out={folder}/out: cannot write in {folder} (Permission "
                                "denied); pass a writable directory")
    pytest.skip("this user writes through read-only permissions (root)")


def _system_dir(tmp):
    del tmp
    try:  # a kernel file system: refused to root as well
        os.rmdir(tempfile.mkdtemp(dir="/sys"))
    except OSError as error:
        return "/sys/gali_out", (f"--out=/sys/gali_out: cannot write in /sys ({error.strerror}); "
                                 "pass a writable directory")
    pytest.skip("/sys is writable here")


@pytest.mark.parametrize("case", [_a_file, _under_a_file, _read_only, _system_dir])
def test_unwritable_out_is_refused_before_restoring_the_run(run_dir, tmp_path, monkeypatch,
                                                            case):
    (tmp_path / "a_file").write_text("kept")
    out, expected = case(tmp_path)

    def restore(*args, **kwargs):
        raise AssertionError("the run was restored before --out was checked")
    monkeypatch.setattr(inpaint.run_dir, "restore_networks", restore)
    with pytest.raises(ConfigError) as info:
        inpaint.inpaint_run(inpaint.InpaintOptions(model_dir=str(run_dir), out=str(out),
                                                   dataset="digits"))
    assert str(info.value) == expected
    assert (tmp_path / "a_file").read_text() == "kept"
    assert sorted(os.listdir(tmp_path)) in (["a_file"], ["a_file", "read_only"])


def test_unwritable_out_in_the_cli_is_one_error_line(run_dir, tmp_path):
    out = tmp_path / "a_file"
    out.write_text("kept")
    done = subprocess.run([sys.executable, "-m", "trainers.inpaint", f"--model_dir={run_dir}",
                           "--dataset=digits", f"--out={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: --out={out} is a file: expected a directory for the PNGs"]
    assert done.stderr.strip().splitlines()[-1] == errors[0]
    assert out.read_text() == "kept"
