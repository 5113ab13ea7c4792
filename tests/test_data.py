"""Tests for gali_tf.data: shapes, ranges, splits, determinism and input errors."""

import gzip
import os
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from gali_tf import data

B = 4


def _first(ds):
    return tf.nest.map_structure(lambda t: t.numpy(), next(iter(ds)))


def _assert_images(x, shape):
    assert x.shape == shape
    assert x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0


def _assert_one_line_error(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


# ----------------------------------------------------------------------------- digits


def test_digits_info_and_shapes():
    cfg = data.DataConfig(dataset="digits")
    info = data.dataset_info(cfg)
    assert info == data.DatasetInfo("digits", (16, 16, 1), 1500, 297, 10, True)
    assert data.steps_per_epoch(info, 64, group=2) == 1500 // 128
    x = _first(data.make_dataset(cfg, "train", B, shuffle=True, repeat=True))
    _assert_images(x, (B, 16, 16, 1))
    assert x.max() > 0.5 and x.min() == -1.0  # the [-1, 1] range is actually used


@pytest.mark.parametrize("split,size", [("train", 1500), ("test", 297)])
def test_digits_split_sizes(split, size):
    ds = data.make_dataset(
        data.DataConfig(), split, 100, shuffle=False, repeat=False, drop_remainder=False
    )
    assert sum(int(x.shape[0]) for x in ds) == size


def test_digits_same_seed_same_stream():
    cfg = data.DataConfig()

    def batches(seed):
        ds = data.make_dataset(cfg, "train", B, shuffle=True, repeat=True, seed=seed)
        return np.stack([x.numpy() for x in ds.take(3)])

    np.testing.assert_array_equal(batches(7), batches(7))
    assert not np.array_equal(batches(7), batches(8))


def test_digits_group_labels_and_options():
    cfg = data.DataConfig(image_size=8, channels=3)
    x = _first(data.make_dataset(cfg, "train", B, shuffle=True, repeat=True, group=2))
    _assert_images(x, (B, 2, 8, 8, 3))
    x, y = _first(
        data.make_dataset(data.DataConfig(), "test", 32, shuffle=False, repeat=False,
                          with_labels=True)
    )
    _assert_images(x, (32, 16, 16, 1))
    assert y.dtype == np.int32 and y.shape == (32,)
    assert y.min() >= 0 and y.max() <= 9


# ----------------------------------------------------------------------------- TFDS


@pytest.fixture(scope="module")
def tfds_metadata_dir(tmp_path_factory):
    """A data_dir holding only TFDS metadata (what a prepared dataset has, minus records).

    mock_data(policy=USE_FILES) reads builders' info from here and fakes the records, so
    the library's real `is_prepared()` check is exercised, not bypassed.
    """
    root = tmp_path_factory.mktemp("tfds")
    for name in data._TFDS:  # pylint: disable=protected-access
        builder = tfds.builder(name, data_dir=str(root))
        template = tfds.core.ShardedFileTemplate(
            data_dir=builder.data_path, dataset_name=name, split="train",
            filetype_suffix="tfrecord",
        )
        builder.info.set_splits(tfds.core.SplitDict([
            tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0,
                                filename_template=template.replace(split=split))
            for split, n in (("train", 20), ("test", 8), ("extra", 30))
            if split != "extra" or name == "svhn_cropped"
        ]))
        builder.data_path.mkdir(parents=True, exist_ok=True)
        builder.info.write_to_directory(builder.data_path)
    return str(root)


def _mock_tfds(metadata_dir):
    return tfds.testing.mock_data(
        num_examples=6, data_dir=metadata_dir, policy=tfds.testing.MockPolicy.USE_FILES
    )


@pytest.mark.parametrize("name", ["svhn_cropped", "cifar10"])
def test_tfds_classes(name, tfds_metadata_dir):
    cfg = data.DataConfig(dataset=name, data_dir="/ignored/by/mock")
    with _mock_tfds(tfds_metadata_dir):
        info = data.dataset_info(cfg)
        assert info == data.DatasetInfo(name, (32, 32, 3), 20, 8, 10, True)
        x, y = _first(data.make_dataset(cfg, "train", B, shuffle=True, repeat=True,
                                        with_labels=True))
        _assert_images(x, (B, 32, 32, 3))
        assert y.dtype == np.int32 and y.shape == (B,)
        assert y.min() >= 0 and y.max() <= 9
        small = data.DataConfig(dataset=name, image_size=16, channels=1)
        x = _first(data.make_dataset(small, "test", B, shuffle=False, repeat=False,
                                     group=1))
        _assert_images(x, (B, 16, 16, 1))


def test_svhn_train_split_extra_as_the_official_scripts(tfds_metadata_dir):
    with _mock_tfds(tfds_metadata_dir):
        for split, num_train in (("train", 20), ("extra", 30), ("train+extra", 50)):
            cfg = data.DataConfig(dataset="svhn_cropped", train_split=split)
            assert data.dataset_info(cfg).num_train == num_train
        x = _first(data.make_dataset(data.DataConfig(dataset="svhn_cropped",
                                                     train_split="extra"),
                                     "train", B, shuffle=True, repeat=True))
        _assert_images(x, (B, 32, 32, 3))
    with pytest.raises(data.DataError, match="--train_split=extra: expected one of train "
                                             "for --dataset=digits"):
        data.dataset_info(data.DataConfig(dataset="digits", train_split="extra"))


def _write_idx(path, array):
    """An IDX file of unsigned bytes as LeCun's MNIST format has it (gzipped)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    """The four Fashion-MNIST IDX files, with 12 train and 5 test images of our own."""
    root = tmp_path_factory.mktemp("fashion")
    rng = np.random.RandomState(0)
    for split, n in (("train", 12), ("test", 5)):
        images_stem, labels_stem = data.FASHION_MNIST_FILES[split]
        images = rng.randint(0, 256, (n, 28, 28))
        images[0, 0, :2] = (0, 255)
        _write_idx(root / f"{images_stem}.gz", images)
        _write_idx(root / f"{labels_stem}.gz", np.arange(n) % 10)
    return root


def test_fashion_mnist_reads_the_idx_files_with_labels(fashion_dir):
    cfg = data.DataConfig(dataset="fashion_mnist", data_dir=str(fashion_dir))
    info = data.dataset_info(cfg)
    assert info == data.DatasetInfo("fashion_mnist", (28, 28, 1), 12, 5, 10, True)
    x, y = _first(data.make_dataset(cfg, "train", 12, shuffle=False, repeat=False,
                                    with_labels=True))
    _assert_images(x, (12, 28, 28, 1))
    assert x[0, 0, 0, 0] == -1.0 and x[0, 0, 1, 0] == 1.0   # bytes 0 and 255
    np.testing.assert_array_equal(y, np.arange(12) % 10)
    np.testing.assert_array_equal(data.train_labels(cfg), np.arange(12) % 10)
    small = data.DataConfig(dataset="fashion_mnist", data_dir=str(fashion_dir), image_size=16)
    _assert_images(_first(data.make_dataset(small, "test", 5, shuffle=False, repeat=False)),
                   (5, 16, 16, 1))


def test_fashion_mnist_missing_or_damaged_is_one_line(fashion_dir, tmp_path):
    with pytest.raises(data.DataError, match=r"--dataset=fashion_mnist: its four IDX files "
                       r"are not in --data_dir=.*apt-get install dataset-fashion-mnist"):
        data.dataset_info(data.DataConfig(dataset="fashion_mnist", data_dir=str(tmp_path)))
    for name in os.listdir(fashion_dir):
        (tmp_path / name).write_bytes((fashion_dir / name).read_bytes())
    stem = data.FASHION_MNIST_FILES["train"][0]
    raw = gzip.decompress((tmp_path / f"{stem}.gz").read_bytes())
    (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(data.DataError, match=f"{stem}.gz: .* truncated or damaged"):
        data.dataset_info(data.DataConfig(dataset="fashion_mnist", data_dir=str(tmp_path)))
    # A damaged deflate stream behind a valid gzip header (zlib.error, not OSError).
    damaged = bytearray(gzip.compress(raw))
    damaged[12] ^= 0xFF
    (tmp_path / f"{stem}.gz").write_bytes(bytes(damaged))
    with pytest.raises(data.DataError, match=f"{stem}.gz: unreadable IDX file"):
        data.read_idx(str(tmp_path / f"{stem}.gz"))


def test_fashion_mnist_from_prepared_tfds(tfds_metadata_dir):
    # No IDX files in --data_dir, but TFDS has fashion_mnist prepared there.
    with _mock_tfds(tfds_metadata_dir):
        cfg = data.DataConfig(dataset="fashion_mnist", data_dir=tfds_metadata_dir)
        assert data.dataset_info(cfg) == data.DatasetInfo("fashion_mnist", (28, 28, 1),
                                                          20, 8, 10, True)
        x, y = _first(data.make_dataset(cfg, "train", B, shuffle=True, repeat=True,
                                        with_labels=True))
        _assert_images(x, (B, 28, 28, 1))
        assert y.shape == (B,) and y.max() <= 9


def test_tfds_celeb_a(tfds_metadata_dir):
    cfg = data.DataConfig(dataset="celeb_a")
    with _mock_tfds(tfds_metadata_dir):
        info = data.dataset_info(cfg)
        assert info.example_shape == (64, 64, 3) and info.num_classes == 40
        x, y = _first(data.make_dataset(cfg, "train", B, shuffle=True, repeat=True,
                                        group=2, with_labels=True))
        _assert_images(x, (B, 2, 64, 64, 3))
        assert y.shape == (B, 2, 40) and y.dtype == np.float32
        assert set(np.unique(y)) <= {0.0, 1.0}
    assert len(data.CELEBA_ATTRIBUTES) == 40
    assert list(data.CELEBA_ATTRIBUTES) == sorted(data.CELEBA_ATTRIBUTES)


def test_tfds_unprepared_raises(tmp_path):
    cfg = data.DataConfig(dataset="svhn_cropped", data_dir=str(tmp_path))
    with pytest.raises(data.DataError) as excinfo:
        data.dataset_info(cfg)
    _assert_one_line_error(excinfo, "--data_dir", str(tmp_path), "svhn_cropped")
    with pytest.raises(data.DataError):
        data.make_dataset(cfg, "train", B, shuffle=False, repeat=False)


# ----------------------------------------------------------------------------- folder


@pytest.fixture
def image_dir(tmp_path):
    rng = np.random.RandomState(0)
    for i in range(12):
        height, width = 20 + 3 * i, 40 - 2 * i
        if i % 3 == 0:
            image = Image.fromarray(rng.randint(0, 256, (height, width), np.uint8), "L")
        else:
            image = Image.fromarray(rng.randint(0, 256, (height, width, 3), np.uint8))
        sub = tmp_path / ("nested" if i % 2 else "")
        sub.mkdir(exist_ok=True)
        ext = (".png", ".jpg", ".JPEG", ".PNG")[i % 4]
        image.save(sub / f"img{i:02d}{ext}", format="PNG" if "png" in ext.lower() else "JPEG")
    (tmp_path / "notes.txt").write_text("not an image, ignored")
    return tmp_path


def test_folder_shapes_and_splits(image_dir):
    cfg = data.DataConfig(dataset="folder", image_dir=str(image_dir), image_size=8)
    info = data.dataset_info(cfg)
    assert info == data.DatasetInfo("folder", (8, 8, 3), 11, 1, 0, True)
    ds = data.make_dataset(cfg, "train", 5, shuffle=True, repeat=False)
    batches = [x.numpy() for x in ds]
    assert len(batches) == 2
    for x in batches:
        _assert_images(x, (5, 8, 8, 3))
    x = _first(data.make_dataset(cfg, "test", 1, shuffle=False, repeat=False))
    _assert_images(x, (1, 8, 8, 3))
    gray = data.DataConfig(dataset="folder", image_dir=str(image_dir), channels=1)
    x = _first(data.make_dataset(gray, "train", B, shuffle=False, repeat=True, group=3))
    _assert_images(x, (B, 3, 64, 64, 1))


def test_folder_errors(tmp_path, image_dir):
    missing = tmp_path / "missing"
    with pytest.raises(data.DataError) as excinfo:
        data.dataset_info(data.DataConfig(dataset="folder", image_dir=str(missing)))
    _assert_one_line_error(excinfo, "--image_dir", "no such directory")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataError) as excinfo:
        data.dataset_info(data.DataConfig(dataset="folder", image_dir=str(empty)))
    _assert_one_line_error(excinfo, "--image_dir", "no .jpg/.jpeg/.png/.gif/.bmp")

    cfg = data.DataConfig(dataset="folder", image_dir=str(image_dir))
    with pytest.raises(data.DataError) as excinfo:
        data.make_dataset(cfg, "train", B, shuffle=False, repeat=False, with_labels=True)
    _assert_one_line_error(excinfo, "--dataset=folder")

    (image_dir / "nested" / "garbage.png").write_bytes(b"this is not a png\n")
    with pytest.raises(data.DataError) as excinfo:   # whichever split it fell in
        data.dataset_info(cfg)
    _assert_one_line_error(excinfo, "--image_dir", "garbage.png",
                           "not a JPEG, PNG, GIF, BMP or WebP")


def _truncate(path, fraction=0.6):
    """Keeps the first `fraction` of a file's bytes: valid magic bytes, a cut-off body."""
    content = path.read_bytes()
    path.write_bytes(content[:int(len(content) * fraction)])


@pytest.mark.parametrize("name", ["img04.png", "nested/img05.jpg"])   # train files
def test_folder_truncated_image_is_named_before_training(image_dir, name):
    _truncate(image_dir / name)
    cfg = data.DataConfig(dataset="folder", image_dir=str(image_dir), image_size=8)
    for build in (lambda: data.dataset_info(cfg),
                  lambda: data.make_dataset(cfg, "train", B, shuffle=True, repeat=True)):
        with pytest.raises(data.DataError) as excinfo:
            build()
        # PIL's reason varies by format ("image file is truncated (70 bytes not processed)").
        assert re.fullmatch(
            re.escape(f"--image_dir: cannot read image {str(image_dir / name)!r} (truncated "
                      "or corrupt: image file is truncated") + r"[^;]*" + re.escape(
                "); delete or replace it, or pass --skip_bad_images to leave unreadable "
                "images out"), str(excinfo.value)), str(excinfo.value)


def test_folder_several_bad_images_are_counted_in_the_one_line(image_dir):
    (image_dir / "nested" / "img05.png").write_bytes(b"\x89PNG not really")
    _truncate(image_dir / "img00.png")
    _truncate(image_dir / "img02.JPEG")
    with pytest.raises(data.DataError) as excinfo:
        data.dataset_info(data.DataConfig(dataset="folder", image_dir=str(image_dir)))
    assert str(excinfo.value) == (
        f"--image_dir: cannot read image {str(image_dir / 'img00.png')!r} (truncated or "
        "corrupt: image file is truncated) and 2 more unreadable image(s); delete or replace "
        "them, or pass --skip_bad_images to leave unreadable images out")


def test_folder_jpeg_with_data_after_its_end_is_kept(image_dir):
    # Some cameras append data after a JPEG's end marker: a whole image all the same.
    path = image_dir / "nested" / "img01.jpg"
    path.write_bytes(path.read_bytes() + b"appended by a camera")
    cfg = data.DataConfig(dataset="folder", image_dir=str(image_dir), image_size=8)
    assert data.dataset_info(cfg).num_train == 11
    _assert_images(_first(data.make_dataset(cfg, "train", 11, shuffle=False, repeat=False)),
                   (11, 8, 8, 3))


def test_folder_skip_bad_images_counts_them_in_one_warning(image_dir, capsys):
    _truncate(image_dir / "img00.png")
    _truncate(image_dir / "img02.JPEG")
    cfg = data.DataConfig(dataset="folder", image_dir=str(image_dir), image_size=8,
                          skip_bad_images=True)
    # The split is cut before bad files are left out: no file changes split.
    assert data.dataset_info(cfg) == data.DatasetInfo("folder", (8, 8, 3), 9, 1, 0, True)
    batches = [x.numpy() for x in data.make_dataset(cfg, "train", 9, shuffle=True,
                                                    repeat=False)]
    assert len(batches) == 1
    _assert_images(batches[0], (9, 8, 8, 3))
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings == [
        f"warning: --image_dir={image_dir}: leaving out 2 unreadable image(s) of 11 in the "
        f"train split (first: {str(image_dir / 'img00.png')!r}, truncated or corrupt: image "
        "file is truncated)"]


def _zero_body(path):
    """Zeroes a PNG's body: its CRCs fail, its end marker stays (the cheap check passes)."""
    content = bytearray(path.read_bytes())
    content[40:-20] = bytes(len(content) - 60)
    path.write_bytes(bytes(content))


def _damaged_after_the_check(image_dir, damage=_zero_body, skip_bad_images=False):
    """A pipeline built while every file was whole, then one file damaged (a file that
    changed during the run, or damage the cheap check cannot see)."""
    cfg = data.DataConfig(dataset="folder", image_dir=str(image_dir), image_size=8,
                          skip_bad_images=skip_bad_images)
    ds = data.make_dataset(cfg, "train", 1, shuffle=False, repeat=False)
    path = image_dir / "img04.png"
    damage(path)
    return ds, path


@pytest.mark.parametrize("damage", [_zero_body, _truncate])
def test_folder_image_failing_mid_run_is_one_data_error_naming_it(image_dir, damage):
    ds, path = _damaged_after_the_check(image_dir, damage)
    with pytest.raises(data.DataError) as excinfo:
        with data.naming_unreadable_images():
            for _ in ds:
                pass
    assert str(excinfo.value) == (
        f"--image_dir: cannot read image {str(path)!r} (truncated or corrupt: it failed to "
        "decode during the run); delete or replace it, or pass --skip_bad_images to leave "
        "unreadable images out")
    # Errors of other origins pass through unchanged.
    with pytest.raises(tf.errors.InvalidArgumentError):
        with data.naming_unreadable_images():
            tf.debugging.assert_equal(1, 2)


def test_folder_image_failing_mid_run_is_skipped_with_skip_bad_images(image_dir, capfd):
    ds, path = _damaged_after_the_check(image_dir, _truncate, skip_bad_images=True)
    assert sum(int(x.shape[0]) for x in ds) == 10
    assert (f"warning: --image_dir={image_dir}: leaving out unreadable image {path}\n"
            in capfd.readouterr().err)


def _needs_webp():
    from PIL import features  # pylint: disable=import-outside-toplevel
    if not features.check("webp"):
        pytest.skip("this Pillow was built without WebP support")


def _webp_bytes(frames, **options):
    """A lossless WebP of uint8 arrays (several: an animation) as bytes."""
    import io  # pylint: disable=import-outside-toplevel
    out = io.BytesIO()
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(out, format="WEBP", lossless=True, save_all=len(images) > 1,
                   append_images=images[1:], **options)
    return out.getvalue()


def test_webp_is_decoded_by_pillow_pixel_for_pixel():
    _needs_webp()
    rgb = np.random.RandomState(0).randint(0, 256, (5, 7, 3)).astype(np.uint8)
    def decode(content):
        return data._decode_webp(tf.constant(content)).numpy()  # pylint: disable=protected-access
    np.testing.assert_array_equal(decode(_webp_bytes([rgb])), rgb)
    rgba = np.dstack([rgb, np.full((5, 7), 9, np.uint8)])
    np.testing.assert_array_equal(decode(_webp_bytes([rgba])), rgb)       # alpha dropped
    # An animation gives its first frame (tf.io.decode_image corrupts the heap here).
    np.testing.assert_array_equal(decode(_webp_bytes([rgb, 255 - rgb])), rgb)
    # Whole files pass the cheap listing check (their RIFF length), without a decode.
    whole = data._webp_is_whole  # pylint: disable=protected-access
    for content in (_webp_bytes([rgb]), _webp_bytes([rgba]), _webp_bytes([rgb, rgb])):
        assert whole(content[:12], len(content)) and not whole(content[:12], len(content) - 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_reads_webp(tmp_path, channels):
    _needs_webp()
    grey = np.full((12, 12, 3), 200, np.uint8)
    (tmp_path / "a.webp").write_bytes(_webp_bytes([grey]))
    (tmp_path / "b.WEBP").write_bytes(_webp_bytes([np.dstack([grey, grey[..., 0] // 2])]))
    (tmp_path / "c.webp").write_bytes(_webp_bytes([grey, grey // 4]))   # an animation
    Image.fromarray(grey).save(tmp_path / "d.png")
    whole = (tmp_path / "a.webp").read_bytes()
    (tmp_path / "cut.webp").write_bytes(whole[:len(whole) * 2 // 3])
    (tmp_path / "sound.webp").write_bytes(b"RIFF\x04\x00\x00\x00WAVE")
    cfg = data.DataConfig(dataset="folder", image_dir=str(tmp_path), image_size=4,
                          channels=channels)
    with pytest.raises(data.DataError) as excinfo:   # shorter than its RIFF header says
        data.dataset_info(cfg)
    _assert_one_line_error(excinfo, "cut.webp", "truncated or corrupt",
                           "and 1 more unreadable image(s)")
    (tmp_path / "cut.webp").unlink()
    with pytest.raises(data.DataError) as excinfo:
        data.dataset_info(cfg)
    _assert_one_line_error(excinfo, "sound.webp", "not a JPEG, PNG, GIF, BMP or WebP")
    (tmp_path / "sound.webp").unlink()
    assert data.dataset_info(cfg).num_train == 4
    images = np.concatenate(list(data.make_dataset(cfg, "train", 4, shuffle=False,
                                                   repeat=False, drop_remainder=False)))
    _assert_images(images, (4, 4, 4, channels))
    # Every file, WebP or PNG, decodes to the grey level 200 of its (first) frame.
    np.testing.assert_allclose(images, 200 / 127.5 - 1, atol=0.01)


def test_folder_webp_failing_mid_run_is_one_data_error_naming_it(tmp_path):
    _needs_webp()
    pixels = np.random.RandomState(1).randint(0, 256, (12, 12, 3)).astype(np.uint8)
    for name in ("a.webp", "b.webp"):
        (tmp_path / name).write_bytes(_webp_bytes([pixels]))
    cfg = data.DataConfig(dataset="folder", image_dir=str(tmp_path), image_size=4)
    ds = data.make_dataset(cfg, "train", 1, shuffle=False, repeat=False)
    _truncate(tmp_path / "b.webp")   # after the check: Pillow fails inside the pipeline
    with pytest.raises(data.DataError) as excinfo:
        with data.naming_unreadable_images():
            for _ in ds:
                pass
    _assert_one_line_error(excinfo, str(tmp_path / "b.webp"),
                           "it failed to decode during the run")


# ------------------------------------------------------------------------------ toy25


def test_toy25():
    cfg = data.DataConfig(dataset="toy25")
    info = data.dataset_info(cfg)
    assert info == data.DatasetInfo("toy25", (2,), 100_000, 10_000, 25, False)
    assert data.TOY25_MEANS.shape == (25, 2)
    ds = data.make_dataset(cfg, "test", 2000, shuffle=True, repeat=False, with_labels=True)
    x, y = _first(ds)
    assert x.shape == (2000, 2) and x.dtype == np.float32
    assert y.dtype == np.int32 and y.min() >= 0 and y.max() <= 24
    for label in np.unique(y):
        mean = x[y == label].mean(axis=0)
        np.testing.assert_allclose(mean, data.TOY25_MEANS[label], atol=5 * data.TOY25_STD)
    assert len(np.unique(y)) == 25
    grouped = _first(data.make_dataset(cfg, "train", B, shuffle=True, repeat=True, group=2))
    assert grouped.shape == (B, 2, 2)


# ------------------------------------------------------------------------ config errors


@pytest.mark.parametrize("cfg,flag", [
    (data.DataConfig(dataset="foo"), "--dataset=foo"),
    (data.DataConfig(image_size=6), "--image_size=6"),
    (data.DataConfig(image_size=0), "--image_size=0"),
    (data.DataConfig(channels=2), "--channels=2"),
])
def test_config_errors(cfg, flag):
    with pytest.raises(data.DataError) as excinfo:
        data.dataset_info(cfg)
    _assert_one_line_error(excinfo, flag)
    assert isinstance(excinfo.value, ValueError)


def test_unknown_dataset_lists_choices():
    with pytest.raises(data.DataError, match="expected one of digits, fashion_mnist, svhn_cropped"):
        data.make_dataset(data.DataConfig(dataset="foo"), "train", B, shuffle=False,
                          repeat=False)


@pytest.fixture
def class_folders(tmp_path):
    """cat/ and dog/ with 12 and 20 images: a labelled folder (Keras' layout)."""
    rng = np.random.RandomState(1)
    for name, count, value in (("cat", 12, 40), ("dog", 20, 200)):
        (tmp_path / name).mkdir()
        for i in range(count):
            pixels = np.clip(value + rng.randint(-10, 10, (10, 10, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / name / f"{i:02d}.png")
    return tmp_path


def test_class_subfolders_label_a_folder(class_folders):
    cfg = data.DataConfig(dataset="folder", image_dir=str(class_folders), image_size=8)
    assert data.folder_classes(cfg) == ("cat", "dog")
    # A tenth of each class is the test split.
    assert data.dataset_info(cfg) == data.DatasetInfo("folder", (8, 8, 3), 29, 3, 2, True)
    for split, counts in (("train", [11, 18]), ("test", [1, 2])):
        images, labels = zip(*data.make_dataset(cfg, split, 4, shuffle=False, repeat=False,
                                                with_labels=True, drop_remainder=False))
        images, labels = np.concatenate(images), np.concatenate(labels)
        assert np.bincount(labels).tolist() == counts
        # The label is the image's folder: cats are dark, dogs bright.
        np.testing.assert_array_equal(labels, (images.mean(axis=(1, 2, 3)) > 0).astype(int))
    np.testing.assert_array_equal(data.train_labels(cfg), np.repeat([0, 1], [11, 18]))
    # Conditional ALI and semi-supervised runs take the folder's labels.
    info = data.dataset_info(cfg)
    x, y = next(iter(data.make_conditional_dataset(cfg, info, "train", 4, shuffle=False,
                                                    repeat=False)))
    assert y.shape == (4, 2)
    x, y = next(iter(data.make_semi_supervised_dataset(cfg, info, 4, num_labeled=4,
                                                       labeled_seed=0, seed=0)))
    assert x.shape == (4, 8, 8, 3) and sorted(y.numpy().tolist()).count(-1) == 2


def test_the_folder_test_split_is_a_seeded_shuffle_not_the_last_files(class_folders):
    cfg = data.DataConfig(dataset="folder", image_dir=str(class_folders / "dog"),
                          image_size=8)
    assert data.folder_classes(cfg) == ()   # one folder of images: unlabelled
    test = sorted(data._folder_split(cfg, "test"))   # pylint: disable=protected-access
    assert len(test) == 2 and test != sorted(data._folder_files(cfg))[-2:]
    assert test == sorted(data._folder_split(cfg, "test"))   # the same every time
    with pytest.raises(data.DataError) as excinfo:
        data.make_dataset(cfg, "train", 4, shuffle=False, repeat=False, with_labels=True)
    _assert_one_line_error(excinfo, "--dataset=folder", "a subfolder of its own")


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_reads_gif_and_bmp_too(tmp_path, channels):
    pixels = np.full((12, 12, 3), 200, np.uint8)
    for name in ("a.gif", "b.bmp", "c.png"):
        Image.fromarray(pixels).save(tmp_path / name)
    (tmp_path / "cut.gif").write_bytes((tmp_path / "a.gif").read_bytes()[:-10])
    cfg = data.DataConfig(dataset="folder", image_dir=str(tmp_path), image_size=4,
                          channels=channels)
    with pytest.raises(data.DataError) as excinfo:   # a GIF cut short lacks its trailer
        data.dataset_info(cfg)
    _assert_one_line_error(excinfo, "cut.gif", "truncated or corrupt")
    (tmp_path / "cut.gif").unlink()
    images = np.concatenate(list(data.make_dataset(cfg, "train", 3, shuffle=False,
                                                   repeat=False, drop_remainder=False)))
    assert images.shape == (3, 4, 4, channels)
    # Every format decodes to the same grey level 200, in [-1, 1].
    np.testing.assert_allclose(images, 200 / 127.5 - 1, atol=0.01)
