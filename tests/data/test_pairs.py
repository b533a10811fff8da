"""pairs: RAW/RGB alignment, manifests and the HDR+ layouts, group split, the patch cache (skip/strict/atomic/reuse)
and the synthetic HDR+-like bursts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from isp_keras.data import pair_cache, pairs, synthetic_bursts
from isp_keras.errors import UserError
from isp_keras.models import architectures, teachers
from isp_keras.raw import rawio, render


def _position_pair(tmp_path, h=30, w=40, file_cfa="GRBG"):
    """A DNG whose value is 1 + 100*row + col and a PNG whose (R, G) = (row, col): content identifies position."""
    mosaic = (1 + 100 * np.arange(h)[:, None] + np.arange(w)[None, :]).astype(np.uint16)
    rawio.write_dng(tmp_path / "pos.dng", mosaic, file_cfa, black_level=0, white_level=65535)
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = np.arange(h)[:, None]
    rgb[..., 1] = np.arange(w)[None, :]
    Image.fromarray(rgb).save(tmp_path / "pos.png")
    return pairs.Pair(str(tmp_path / "pos.dng"), str(tmp_path / "pos.png"), "g")


@pytest.mark.parametrize("file_cfa", ["RGGB", "GRBG", "GBRG", "BGGR"])
def test_raw_and_rgb_patches_stay_aligned(tmp_path, file_cfa):
    pair = _position_pair(tmp_path, file_cfa=file_cfa)
    mosaic, rgb = pairs.aligned_pair(pair, "RGGB")
    raws, rgbs, spots = pairs.cut_patches(mosaic, rgb, 8)
    assert len(raws) == (mosaic.shape[0] // 8) * (mosaic.shape[1] // 8) and len(raws) >= 9
    for raw, rgb_patch in zip(raws, rgbs, strict=True):
        code = np.round(raw * 65535).astype(np.int64) - 1
        np.testing.assert_array_equal(code // 100, rgb_patch[..., 0])
        np.testing.assert_array_equal(code % 100, rgb_patch[..., 1])
    first_row, first_col = int(rgbs[0][0, 0, 0]), int(rgbs[0][0, 0, 1])
    assert (first_row, first_col) == rawio.cfa_offset(file_cfa, "RGGB")


def test_geometry_mismatch_names_both_files(tmp_path):
    pair = _position_pair(tmp_path)
    Image.fromarray(np.zeros((30, 38, 3), np.uint8)).save(tmp_path / "pos.png")
    with pytest.raises(UserError, match=r"pos\.png: RGB is 38x30 but the RAW .*pos\.dng has a visible area of 40x30"):
        pairs.aligned_pair(pair, "RGGB")


def test_split_groups_is_seeded_and_disjoint():
    groups = [f"b{i}" for i in range(50)]
    test = pairs.split_groups(groups * 3, 0.2, seed=1)
    assert len(test) == 10 and test <= set(groups)
    assert test == pairs.split_groups(groups, 0.2, seed=1)
    assert test != pairs.split_groups(groups, 0.2, seed=2)
    assert len(pairs.split_groups(["a", "b"], 0.2, 0)) == 1  # never an empty test split with two groups


def test_manifest_and_hdrplus_layouts(tmp_path):
    (tmp_path / "m.csv").write_text("raw,rgb,group\nx/a.dng,x/a.jpg,s1\nb.dng,b.jpg,s2\n")
    listed = pairs.pairs_from_csv(tmp_path / "m.csv")
    assert listed[0] == pairs.Pair(str(tmp_path / "x/a.dng"), str(tmp_path / "x/a.jpg"), "s1")
    (tmp_path / "bad.csv").write_text("file,label\n")
    with pytest.raises(UserError, match="bad.csv: the manifest needs a header raw,rgb,group"):
        pairs.pairs_from_csv(tmp_path / "bad.csv")
    # The published dataset's layout: bursts/<id>/payload + reference_frame.txt, results_*/<id>/merged + final.
    root = tmp_path / "hdrplus"
    for burst, ref in (("0001_a", "2"), ("0002_b", "7")):
        (root / "bursts" / burst).mkdir(parents=True)
        (root / "results_20171023" / burst).mkdir(parents=True)
        for k in range(3):
            (root / "bursts" / burst / f"payload_N{k:03d}.dng").write_bytes(b"")
        (root / "bursts" / burst / "reference_frame.txt").write_text(ref + "\n")
    merged = pairs.pairs_from_hdrplus(root, "merged")
    assert [p.raw for p in merged] == [str(root / "results_20171023" / b / "merged.dng") for b in ("0001_a", "0002_b")]
    assert merged[0].rgb == str(root / "results_20171023" / "0001_a" / "final.jpg") and merged[0].group == "0001_a"
    short = pairs.pairs_from_hdrplus(root, "short")
    assert short[0].raw == str(root / "bursts" / "0001_a" / "payload_N002.dng") and short[0].problem is None
    assert "frame 7 but the burst has 3 payload frames" in short[1].problem
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no burst folders"):
        pairs.pairs_from_hdrplus(tmp_path / "empty")


@pytest.fixture(scope="module")
def bursts(tmp_path_factory):
    """Six synthetic bursts of 2x2 embedded images (64x64 frames, RGGB)."""
    root = tmp_path_factory.mktemp("bursts") / "hdrplus"
    images, labels = synthetic_bursts.embedded_images("test", 24)
    assert synthetic_bursts.synthesize_bursts(root, images, labels, tiles=2, frames=2, seed=3, progress=False) == 6
    return root


def test_synthetic_bursts_have_real_headers(bursts):
    burst = bursts / "burst_00000"
    assert sorted(p.name for p in burst.iterdir()) == [
        "final.jpg",
        "merged.dng",
        "payload_N000.dng",
        "payload_N001.dng",
        "reference_frame.txt",
    ]
    merged = rawio.read_raw(burst / "merged.dng")
    short = rawio.read_raw(burst / "payload_N000.dng")
    assert merged.white_level == 4095 and merged.black_level == [256.0] * 4 and merged.mosaic.shape == (64, 64)
    assert short.white_level == 1023 and short.black_level == [64.0] * 4
    assert merged.wb_gains[0] > 1.5 and merged.wb_gains[2] > 1.2  # the inverse of the random WB in the file
    assert short.mosaic.mean() < 0.5 * merged.mosaic.mean()  # the short exposure is darker
    final = np.asarray(Image.open(burst / "final.jpg"))
    assert final.shape == (64, 64, 3)
    assert (bursts / "labels.csv").read_text().splitlines()[1] == f"burst_00000,0,{_first_label()}"


def _first_label():
    return int(synthetic_bursts.embedded_images("test", 1)[1][0])


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """An untrained resnet_tiny (+ sidecar): labelling needs a teacher, not a good one (and this one costs 1 s)."""
    import keras

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.keras"
    architectures.build("resnet_tiny", 10, 32).save(path)
    teachers.write_spec(path, teachers.TeacherSpec(32, 10, [0.5] * 3, [0.25] * 3, classes=[str(i) for i in range(10)]))
    return path


def _probs(cache, split):
    files = [str(cache / f) for f in pair_cache.read_index(cache)["splits"][split]["files"]]
    return [
        tf.train.Example.FromString(r.numpy()).features.feature["prob"].float_list.value[0]
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP")
    ]


def _teacher(path):
    teacher, spec = teachers.load_teacher(str(path))
    return teachers.freeze(teacher), spec


def _build(bursts, out, teacher_path, **kw):
    teacher, spec = _teacher(teacher_path)
    cfg = pair_cache.BuildConfig(pairs=f"hdrplus:{bursts}", out=str(out), patch_size=32, **kw)
    return pair_cache.build_cache(cfg, teacher, spec, str(teacher_path), progress=False)


def test_cache_contents_split_and_filter(bursts, tmp_path, tiny_teacher):
    index = _build(bursts, tmp_path / "cache", tiny_teacher, min_teacher_prob=0.0, seed=0)
    assert index["pairs"] == 6 and index["skipped"]["count"] == 0
    counts = {s: v["count"] for s, v in index["splits"].items()}
    assert counts["train"] + counts["test"] == 6 * 4
    test_groups = set(index["test_groups"])
    assert len(test_groups) == 1  # round(6 * 0.2)
    seen = {"train": set(), "test": set()}
    for split in ("train", "test"):
        files = [str(tmp_path / "cache" / f) for f in index["splits"][split]["files"]]
        for rec in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            ex = tf.train.Example.FromString(rec.numpy()).features.feature
            seen[split].add(ex["group"].bytes_list.value[0].decode())
    assert seen["test"] == test_groups and not (seen["train"] & test_groups)
    # The cached patches are exactly the aligned patches of the files.
    first = sorted(seen["train"])[0]
    mosaic, rgb = pairs.aligned_pair(
        pairs.Pair(str(bursts / first / "merged.dng"), str(bursts / first / "final.jpg"), first), "RGGB"
    )
    raws, rgbs, _ = pairs.cut_patches(mosaic, rgb, 32)
    cached = [(r.numpy(), c.numpy()) for r, c, _ in pair_cache.dataset(tmp_path / "cache", "train")]
    assert any(
        np.array_equal(r[..., 0], raws[0]) and np.array_equal(np.round(c * 255).astype(np.uint8), rgbs[0])
        for r, c in cached
    )
    np.testing.assert_allclose(
        index["raw_stats"]["mean"][1],
        np.mean([r[..., 0][np.tile([[False, True], [True, False]], (16, 16))].mean() for r, _ in cached]),
        rtol=1e-4,
    )
    # A confidence threshold only ever removes test patches.
    probs = sorted(_probs(tmp_path / "cache", "test"))
    threshold = (probs[0] + probs[-1]) / 2
    assert probs[0] < threshold < probs[-1]
    strict_index = _build(bursts, tmp_path / "cache_hi", tiny_teacher, min_teacher_prob=threshold, seed=0)
    assert strict_index["splits"]["train"]["count"] == counts["train"]
    kept = _probs(tmp_path / "cache_hi", "test")
    assert kept and min(kept) > threshold and len(kept) == sum(p > threshold for p in probs)
    assert strict_index["test_dropped_low_prob"] == counts["test"] - len(kept)


def test_csv_manifest_builds_the_same_patches(bursts, tmp_path, tiny_teacher):
    lines = ["raw,rgb,group"] + [
        f"{bursts}/burst_{b:05d}/merged.dng,{bursts}/burst_{b:05d}/final.jpg,burst_{b:05d}" for b in range(6)
    ]
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    teacher, spec = _teacher(tiny_teacher)
    via_csv = pair_cache.build_cache(
        pair_cache.BuildConfig(
            pairs=f"csv:{tmp_path / 'pairs.csv'}", out=str(tmp_path / "c1"), patch_size=32, min_teacher_prob=0.0
        ),
        teacher,
        spec,
        str(tiny_teacher),
        progress=False,
    )
    via_dir = _build(bursts, tmp_path / "c2", tiny_teacher, min_teacher_prob=0.0)
    assert via_csv["splits"]["train"]["count"] == via_dir["splits"]["train"]["count"]
    assert via_csv["test_groups"] == via_dir["test_groups"] and via_csv["raw_stats"] == via_dir["raw_stats"]


def test_max_patches_per_pair_samples_a_seeded_subset(bursts, tmp_path, tiny_teacher):
    index = _build(bursts, tmp_path / "cache", tiny_teacher, min_teacher_prob=0.0, max_patches_per_pair=2)
    assert index["splits"]["train"]["count"] + index["splits"]["test"]["count"] == 6 * 2
    again = _build(bursts, tmp_path / "cache2", tiny_teacher, min_teacher_prob=0.0, max_patches_per_pair=2)
    first = [r.numpy() for r, _, _ in pair_cache.dataset(tmp_path / "cache", "train")]
    second = [r.numpy() for r, _, _ in pair_cache.dataset(tmp_path / "cache2", "train")]
    assert again["key"] == index["key"] and all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_bad_file_is_skipped_or_stops_with_strict(bursts, tmp_path, tiny_teacher, monkeypatch):
    root = tmp_path / "hdrplus"
    shutil.copytree(bursts, root)
    (root / "burst_00002" / "merged.dng").write_bytes(b"II*\x00garbage")
    warnings = []
    monkeypatch.setattr(pair_cache.logging, "warning", lambda msg, *a: warnings.append(msg % a))
    index = _build(root, tmp_path / "cache", tiny_teacher, min_teacher_prob=0.0)
    assert index["skipped"]["count"] == 1 and index["pairs_read"] == 5
    assert index["skipped"]["files"][0]["raw"].endswith("burst_00002/merged.dng")
    assert any("burst_00002" in w and "merged.dng" in w for w in warnings)
    assert json.loads((tmp_path / "cache" / "index.json").read_text())["skipped"]["count"] == 1

    with pytest.raises(UserError, match=r"burst_00002/merged\.dng: .*--strict"):
        _build(root, tmp_path / "strict_cache", tiny_teacher, min_teacher_prob=0.0, strict=True)
    assert not (tmp_path / "strict_cache").exists() and not (tmp_path / ".strict_cache.partial").exists()


def test_cache_is_reused_and_never_half_written(bursts, tmp_path, tiny_teacher, monkeypatch):
    first = _build(bursts, tmp_path / "cache", tiny_teacher, min_teacher_prob=0.0)

    def no_decoding(*a, **k):
        raise AssertionError("the cache should have been reused")

    with monkeypatch.context() as m:
        m.setattr(pairs.rawio, "read_raw", no_decoding)
        assert _build(bursts, tmp_path / "cache", tiny_teacher, min_teacher_prob=0.0) == first

    calls = {"n": 0}
    real_cut = pairs.cut_patches

    def crash_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed mid-build")
        return real_cut(*a, **k)

    monkeypatch.setattr(pair_cache, "cut_patches", crash_on_third)
    with pytest.raises(RuntimeError):  # a different setting: a rebuild that dies halfway
        _build(bursts, tmp_path / "cache", tiny_teacher, min_teacher_prob=0.01)
    assert not (tmp_path / ".cache.partial").exists()
    assert pair_cache.read_index(tmp_path / "cache") == first  # the complete old cache is untouched


def test_raw_folder_pairs_render_their_rgb_with_libraw(tmp_path):
    counts = (1 + 100 * np.arange(30)[:, None] + np.arange(40)[None, :]).astype(np.uint16)
    for name, cfa in (("b.dng", "GRBG"), ("a.DNG", "RGGB")):
        rawio.write_dng(tmp_path / name, counts, cfa, black_level=0, white_level=65535)
    (tmp_path / "notes.txt").write_text("not a RAW file")
    listed = pairs.list_pairs(f"raw:{tmp_path}")
    assert listed == [pairs.Pair(str(tmp_path / n), pairs.LIBRAW, n) for n in ("a.DNG", "b.dng")]
    mosaic, rgb = pairs.aligned_pair(listed[1], "RGGB")
    y, x = rawio.canonical_crop(30, 40, rawio.cfa_offset("GRBG", "RGGB"))
    assert mosaic.shape == rgb.shape[:2] == (y.stop - y.start, x.stop - x.start)
    np.testing.assert_array_equal(rgb, render.libraw_srgb(tmp_path / "b.dng")[y, x])
    (tmp_path / "m.csv").write_text("raw,rgb,group\na.DNG,,s1\nb.dng,libraw,s2\n")
    assert [p.rgb for p in pairs.pairs_from_csv(tmp_path / "m.csv")] == [pairs.LIBRAW, pairs.LIBRAW]
    (tmp_path / "none").mkdir()
    with pytest.raises(
        UserError, match=r"raw:.*none: no RAW files \(camera formats \.dng, .*or files with a sidecar JSON\)"
    ):
        pairs.list_pairs(f"raw:{tmp_path / 'none'}")


def test_dump_pairs_take_the_raw_format(tmp_path):
    """A headerless dump pairs like a DNG: its format comes from the --raw_* flags (via BuildConfig.of) over its
    sidecar; the sidecar and the format are part of the cache key, which is unchanged for files without them."""
    import dataclasses
    import hashlib

    from isp_keras.data.config import PairsConfig
    from isp_keras.raw.dumps import SensorFormat

    h, w = 30, 40
    (1 + 100 * np.arange(h)[:, None] + np.arange(w)[None, :]).astype("<u2").tofile(tmp_path / "pos.raw")
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = np.arange(h)[:, None], np.arange(w)[None, :]
    Image.fromarray(rgb).save(tmp_path / "pos.png")
    pair = pairs.Pair(str(tmp_path / "pos.raw"), str(tmp_path / "pos.png"), "g")
    build = pair_cache.BuildConfig.of(
        PairsConfig(pairs="csv:x", out="y", raw_width=w, raw_height=h, raw_bits=16, raw_cfa="GRBG"), "y", "merged"
    )
    assert build.raw_format == SensorFormat(width=w, height=h, bits=16, cfa="GRBG")
    mosaic, patch_rgb = pairs.aligned_pair(pair, "RGGB", build.raw_format)
    code = np.round(mosaic * 65535).astype(np.int64) - 1
    np.testing.assert_array_equal(code // 100, patch_rgb[..., 0])
    np.testing.assert_array_equal(code % 100, patch_rgb[..., 1])
    assert patch_rgb[0, 0, 1] == 1  # GRBG -> RGGB drops the first column

    plain = dataclasses.replace(build, raw_format=None)
    settings = {
        k: v for k, v in dataclasses.asdict(plain).items() if k not in ("out", "strict", "shards", "batch_size")
    }
    del settings["raw_format"]
    items = [[pair_cache._file_id(pair.raw), pair_cache._file_id(pair.rgb), pair.group, pair.problem]]
    blob = json.dumps({"settings": settings, "pairs": items, "teacher": pair_cache._file_id("t")}, sort_keys=True)
    before = pair_cache.cache_key(plain, [pair], "t")
    assert before == hashlib.sha256(blob.encode()).hexdigest()  # the key of caches built before dumps existed
    assert pair_cache.cache_key(build, [pair], "t") != before
    (tmp_path / "pos.raw.json").write_text(json.dumps({"width": w, "height": h, "bits": 16, "cfa": "GRBG"}))
    with_sidecar = pair_cache.cache_key(plain, [pair], "t")
    assert with_sidecar != before
    np.testing.assert_array_equal(pairs.aligned_pair(pair, "RGGB")[0], mosaic)


def test_manifest_format_column_names_a_sidecar_kept_elsewhere(tmp_path):
    h, w = 30, 40
    counts = (1 + 100 * np.arange(h)[:, None] + np.arange(w)[None, :]).astype("<u2")
    (tmp_path / "ro").mkdir()
    counts.tofile(tmp_path / "ro" / "shot.raw")
    (tmp_path / "formats").mkdir()
    (tmp_path / "formats" / "shot.json").write_text(json.dumps({"width": w, "height": h, "bits": 16, "cfa": "GBRG"}))
    (tmp_path / "m.csv").write_text("raw,rgb,group,format\nro/shot.raw,,s1,formats/shot.json\n")
    (pair,) = pairs.list_pairs(f"csv:{tmp_path / 'm.csv'}")
    assert pair.sidecar == str(tmp_path / "formats" / "shot.json") and pair.rgb == pairs.LIBRAW
    mosaic, rgb = pairs.aligned_pair(pair, "RGGB")
    assert mosaic.shape == rgb.shape[:2] == (28, 40)  # GBRG -> RGGB drops the first row and, to stay even, the last
    np.testing.assert_array_equal(np.round(mosaic * 65535).astype(np.int64) - 1, (counts[1:29] - 1).astype(np.int64))
    with pytest.raises(UserError, match="shot.raw: a headerless sensor dump needs its format"):
        pairs.aligned_pair(pairs.Pair(pair.raw, pair.rgb, pair.group), "RGGB")
