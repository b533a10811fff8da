"""Sources and the tf.data builder: shapes, dtypes, teacher and student see the same crop, determinism."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from isp_keras.data import normalisation, pipeline, sources
from isp_keras.errors import UserError
from isp_keras.raw import bayer

NORM = normalisation.Normalisation(
    raw_mean=[0.4, 0.45, 0.5], raw_std=[0.2, 0.25, 0.3], rgb_mean=[0.5, 0.48, 0.45], rgb_std=[0.25, 0.24, 0.26]
)


@pytest.fixture(scope="module")
def embedded():
    return sources.get_source("embedded")


def cfg(**kw):
    base = dict(image_size=32, batch_size=16, cfa="GRBG", noise_std=0.0, seed=3, take=64)
    base.update(kw)
    return pipeline.PipelineConfig(**base)


def _first(ds):
    return next(iter(ds))


def test_embedded_source_is_real_cifar10(embedded):
    assert embedded.classes[:3] == ["airplane", "automobile", "bird"] and len(embedded.classes) == 10
    assert embedded.counts == {"train": 20000, "test": 10000}
    image, label = _first(embedded.split("test"))
    assert image.dtype == tf.uint8 and image.shape == (32, 32, 3) and 0 <= int(label) < 10
    assert 20 < float(tf.reduce_mean(tf.cast(image, tf.float32))) < 235  # a photo, not a blank


@pytest.mark.parametrize("training", [False, True])
def test_student_sees_the_raw_of_the_teachers_crop(embedded, training):
    (student_x, teacher_x), labels = _first(pipeline.build(embedded, "train", cfg(), training=training, norm=NORM))
    assert student_x.shape == teacher_x.shape == (16, 32, 32, 3) and student_x.dtype == tf.float32
    assert labels.dtype == tf.int32 and labels.shape == (16,)
    rgb = teacher_x.numpy() * np.array(NORM.rgb_std, np.float32) + np.array(NORM.rgb_mean, np.float32)
    expected = bayer.raw_to_input(bayer.mosaic(tf.constant(rgb), "GRBG"), "GRBG", NORM.raw_mean, NORM.raw_std)
    np.testing.assert_allclose(student_x.numpy(), expected.numpy(), atol=2e-5)


def _numpy_mosaic(rgb, cfa):
    """Reference Bayer sampling: each site keeps the channel its CFA letter names."""
    channel = {"R": 0, "G": 1, "B": 2}
    out = np.zeros(rgb.shape[:3] + (1,), rgb.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            out[:, dy::2, dx::2, 0] = rgb[:, dy::2, dx::2, channel[cfa[2 * dy + dx]]]
    return out


def test_a_student_of_another_size_sees_the_mosaic_of_the_resized_scene(embedded):
    """student_size: the teacher keeps its 32 px crop, the student gets the Bayer mosaic of that crop resized to
    16 px, and (mode student_rgb) the clean crop at 16 px in the teacher's normalisation."""
    c = cfg(student_size=16, take=16)
    raw, rgb, _ = _first(pipeline.build(embedded, "test", c, training=False, norm=None, mode="mosaic"))
    assert rgb.shape == (16, 32, 32, 3) and raw.shape == (16, 16, 16, 1) and c.student_image_size == 16
    scene = tf.image.resize(rgb, [16, 16], antialias=True).numpy()
    np.testing.assert_allclose(raw.numpy(), _numpy_mosaic(scene, "GRBG"), atol=1e-6)
    (small, teacher_x), _ = _first(pipeline.build(embedded, "test", c, training=False, norm=NORM, mode="student_rgb"))
    mean, std = np.array(NORM.rgb_mean, np.float32), np.array(NORM.rgb_std, np.float32)
    np.testing.assert_allclose(small.numpy(), (scene - mean) / std, atol=1e-5)
    np.testing.assert_allclose(teacher_x.numpy(), (rgb.numpy() - mean) / std, atol=1e-5)
    (student_x, _), _ = _first(pipeline.build(embedded, "test", c, training=False, norm=NORM))
    assert student_x.shape == (16, 16, 16, 3)
    same = _first(
        pipeline.build(embedded, "test", cfg(student_size=32, take=16), training=False, norm=None, mode="mosaic")
    )
    assert same[0].shape == (16, 32, 32, 1)  # the teacher's own size: no resize


def test_noise_is_added_with_the_asked_std(embedded):
    clean = _first(pipeline.build(embedded, "test", cfg(), training=False, norm=None, mode="mosaic"))[0]
    noisy = _first(pipeline.build(embedded, "test", cfg(noise_std=0.1), training=False, norm=None, mode="mosaic"))[0]
    assert abs(float(tf.math.reduce_std(noisy - clean)) - 0.1) < 0.005


def test_eval_pipeline_is_deterministic_and_seeded(embedded):
    def batch(seed):
        c = cfg(noise_std=0.1, seed=seed)
        return _first(pipeline.build(embedded, "test", c, training=False, norm=NORM))[0][0].numpy()

    np.testing.assert_array_equal(batch(1), batch(1))
    assert np.abs(batch(1) - batch(2)).max() > 0.1


def test_training_pipeline_is_reproducible_per_seed(embedded):
    def epoch(seed):
        ds = pipeline.build(embedded, "train", cfg(noise_std=0.1, seed=seed), training=True, norm=NORM)
        return np.concatenate([x[0].numpy() for x, _ in ds])

    a, b = epoch(5), epoch(5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, epoch(6))


def test_rgb_and_raw_modes(embedded):
    x, y = _first(pipeline.build(embedded, "test", cfg(), training=False, norm=NORM, mode="rgb"))
    assert x.shape == (16, 32, 32, 3)
    raw, rgb, y = _first(pipeline.build(embedded, "test", cfg(), training=False, norm=None, mode="mosaic"))
    assert raw.shape == (16, 32, 32, 1) and rgb.shape == (16, 32, 32, 3)
    assert 0.0 <= float(tf.reduce_min(rgb)) and float(tf.reduce_max(rgb)) <= 1.0


def test_bgr_teacher_gets_flipped_channels(embedded):
    bgr = dataclasses.replace(NORM, channel_order="BGR")
    (s_rgb, t_rgb), _ = _first(pipeline.build(embedded, "test", cfg(), training=False, norm=NORM))
    (s_bgr, t_bgr), _ = _first(pipeline.build(embedded, "test", cfg(), training=False, norm=bgr))
    np.testing.assert_array_equal(t_bgr.numpy(), t_rgb.numpy()[..., ::-1])
    np.testing.assert_array_equal(s_bgr.numpy(), s_rgb.numpy()[..., ::-1])


def test_per_site_normalisation_matches_numpy(embedded):
    c = cfg(noise_std=0.05, take=200)
    norm = pipeline.compute_normalisation(embedded, c, max_images=200)
    raw = np.concatenate(
        [r.numpy() for r, _, _ in pipeline.build(embedded, "train", c, training=False, norm=None, mode="mosaic")]
    )
    masks = bayer.cfa_masks(32, 32, "GRBG")
    for ch in range(3):
        vals = raw[..., 0][:, masks[..., ch] == 1]
        assert norm.raw_mean[ch] == pytest.approx(vals.mean(), abs=1e-5)
        assert norm.raw_std[ch] == pytest.approx(vals.std(), abs=1e-5)


def test_statistics_after_a_tone_curve_match_numpy(embedded):
    c = cfg(noise_std=0.05, take=200)
    norm = pipeline.compute_normalisation(embedded, c, max_images=200)
    values = [0.0, 0.5, 0.7, 0.85, 1.0]
    knots = np.linspace(0.0, 1.0, len(values))

    def curve(raw):  # the end segments continued outside [0, 1], as the adapter's curve
        x = raw.numpy().astype(np.float64)
        y = np.interp(x, knots, values)
        y = np.where(x < 0, x * (values[1] - values[0]) * 4, y)
        return np.where(x > 1, values[-1] + (x - 1) * (values[-1] - values[-2]) * 4, y)

    got = pipeline.compute_curve_statistics(embedded, c, norm, values, curve, max_images=200)
    assert (got.raw_mean, got.raw_std, got.rgb_mean) == (norm.raw_mean, norm.raw_std, norm.rgb_mean)
    assert got.curve == values
    raw = np.concatenate(
        [curve(r) for r, _, _ in pipeline.build(embedded, "train", c, training=False, norm=None, mode="mosaic")]
    )
    masks = bayer.cfa_masks(32, 32, "GRBG")
    for ch in range(3):
        vals = raw[..., 0][:, masks[..., ch] == 1]
        assert got.curve_mean[ch] == pytest.approx(vals.mean(), abs=1e-5)
        assert got.curve_std[ch] == pytest.approx(vals.std(), abs=1e-5)
        assert got.curve_mean[ch] > norm.raw_mean[ch] + 0.05  # the curve lifts the mid-tones
    with pytest.raises(UserError, match="curve_std"):
        normalisation.check_normalisation(dataclasses.replace(got, curve_std=None), "x")


def _write_folder(root, sizes_modes):
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i, (size, mode) in enumerate(sizes_modes):
            rng = np.random.default_rng(i)
            arr = rng.integers(0, 255, size + ((len(mode),) if len(mode) > 1 else ()), dtype=np.uint8)
            Image.fromarray(arr, mode=None).convert(mode).save(root / cls / f"{i}.png")


def test_folder_source_converts_grey_and_rgba_and_resizes_odd_sizes(tmp_path):
    _write_folder(
        tmp_path, [((33, 41), "L"), ((40, 40), "RGBA"), ((37, 36), "RGB"), ((50, 45), "RGB"), ((32, 32), "RGB")]
    )
    source = sources.get_source(f"folder:{tmp_path}", seed=0)
    assert source.classes == ["cats", "dogs"] and source.counts == {"train": 8, "test": 2}
    for image, _ in source.split("train"):
        assert image.shape[-1] == 3 and image.dtype == tf.uint8
    ds = pipeline.build(source, "train", cfg(take=None, batch_size=4), training=False, norm=NORM)
    for (s, t), _ in ds:
        assert s.shape[1:] == (32, 32, 3) and t.shape[1:] == (32, 32, 3)


def test_folder_with_train_and_test_subfolders(tmp_path):
    _write_folder(tmp_path / "train", [((32, 32), "RGB")] * 3)
    _write_folder(tmp_path / "test", [((32, 32), "RGB")])
    source = sources.get_source(f"folder:{tmp_path}")
    assert source.counts == {"train": 6, "test": 2}


def test_tfds_source_reads_a_prepared_dataset(tmp_path):
    import tensorflow_datasets as tfds

    class TinyGrey(tfds.core.GeneratorBasedBuilder):
        """Grey 6x6 images, prepared offline from a generator."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {"image": tfds.features.Image(shape=(6, 6, 1)), "label": tfds.features.ClassLabel(names=["a", "b"])}
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(4), "test": self._generate_examples(2)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((6, 6, 1), 40 * i, np.uint8), "label": i % 2}

    TinyGrey(data_dir=str(tmp_path)).download_and_prepare()
    source = sources.tfds_source("tiny_grey", data_dir=str(tmp_path))
    assert source.classes == ["a", "b"] and source.counts == {"train": 4, "test": 2} and source.native_size == 6
    images = [(img.numpy(), int(y)) for img, y in source.split("train")]
    assert all(img.shape == (6, 6, 3) and img.dtype == np.uint8 for img, _ in images)  # grey -> RGB
    assert sorted(int(img[0, 0, 2]) for img, _ in images) == [0, 40, 80, 120]


def test_unknown_dataset_specs_fail_clearly(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'imagenet'"):
        sources.get_source("imagenet")
    with pytest.raises(UserError, match="not a directory"):
        sources.get_source(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(UserError, match="unknown TFDS dataset"):
        sources.get_source("tfds:no_such_dataset_xyz")
