"""Table 2 on real files: trained RAW students against their teacher on RAW/RGB pairs they never saw.

The paper's second experiment ("full ISP discarded") with students trained elsewhere (e.g. the ImageNet setting's
MobileNetV2): each pair (data.pairs: csv:, hdrplus: or raw:DIR, whose RGB LibRaw renders from the RAW file) is cut
into aligned non-overlapping tiles of the students' input size in their CFA phase. The teacher labels each RGB tile;
each student, and the teacher itself on the RAW (`teacher_raw`, the student's input pipeline: bilinear infill and
the run's normalisation), classifies the RAW tile. Per row:

- `agreement`: top-1 equal to the teacher's, on the tiles where the teacher's top probability > min_teacher_prob;
- `agreement_top5`: the teacher's class among the row's top 5, on the same tiles;
- `agreement_all`: top-1 agreement on every tile;
- the number of tiles each figure rests on, overall and per file.

`bin` > 1 first shrinks both sides by that factor, so that a tile sees more of a small photo: the mosaic by Bayer
binning (deploy.tiles.bin_mosaic: the mean of the f x f same-colour sites of each 2f x 2f block, the CFA kept), the
RGB by the mean of each f x f block. A binned site's centre and its RGB pixel's centre then differ by less than half
a binned pixel (binning's own phase shift), which does not matter at tile scale.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from isp_keras import fsutil
from isp_keras.data import pair_cache, pipeline
from isp_keras.data import pairs as pairs_lib
from isp_keras.deploy import serving, tiles
from isp_keras.errors import UserError

TEACHER_RAW = "teacher_raw"


@dataclasses.dataclass
class Rows:
    """Per-tile results of one file: the teacher's top-1 and confidence, and each row's top-5 classes."""

    teacher_top1: np.ndarray  # [n]
    teacher_prob: np.ndarray  # [n]
    top5: dict  # row name -> [n, 5]


def parse_students(specs: list[str]) -> list[tuple[str, str]]:
    """NAME=PATH (or PATH, named after its folder) -> [(name, path)], names unique."""
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec.rstrip("/")).name, spec
        if not name or not path:
            raise UserError(f"--students={spec}: give NAME=RUN_DIR or RUN_DIR")
        if name == TEACHER_RAW or name in dict(out):
            raise UserError(f"--students: the name {name!r} is used twice (or is the reserved {TEACHER_RAW})")
        out.append((name, path))
    if not out:
        raise UserError("--students: give one or more trained students (NAME=RUN_DIR)")
    return out


def load_students(specs: list[str]) -> dict:
    students = {name: serving.load_student(path) for name, path in parse_students(specs)}
    first_name, first = next(iter(students.items()))
    for name, s in students.items():
        if (s.image_size, s.cfa, len(s.classes)) != (first.image_size, first.cfa, len(first.classes)):
            raise UserError(
                f"--students: {name} takes {s.image_size} px {s.cfa} mosaics with {len(s.classes)} classes but "
                f"{first_name} takes {first.image_size} px {first.cfa} with {len(first.classes)}; compare like "
                "with like"
            )
    return students


def _batched(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([fn(tf.constant(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)])


def _softmax_fn(model, prepare):
    """One traced function per model (shapes vary only in the batch), so files do not retrace it."""
    return tf.function(lambda t: tf.nn.softmax(model(prepare(t), training=False), axis=-1), reduce_retracing=True)


def _top5(probs: np.ndarray) -> np.ndarray:
    return np.argsort(-probs, axis=-1, kind="stable")[:, :5]


def bin_pair(mosaic: np.ndarray, rgb: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Both sides of a pair shrunk by `factor` (see the module docstring); the same shape."""
    if factor == 1:
        return mosaic, rgb
    binned = tiles.bin_mosaic(mosaic, factor)
    h, w = binned.shape
    blocks = rgb[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).astype(np.float64)
    return binned, np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def classifiers(students: dict, teacher) -> tuple:
    """(teacher on RGB in [0, 1], {row: fn on mosaics}): the teacher_raw row and every student."""
    first = next(iter(students.values()))
    on_rgb = _softmax_fn(teacher, lambda t: pipeline.teacher_input(t, norm=first.norm))
    on_raw = {TEACHER_RAW: _softmax_fn(teacher, lambda t: pipeline.student_input(t, cfa=first.cfa, norm=first.norm))}
    for name, student in students.items():
        serve = serving.probabilities_fn(student)
        on_raw[name] = tf.function(lambda t, serve=serve: serve(t)[serving.OUTPUT_NAME], reduce_retracing=True)
    return on_rgb, on_raw


def classify_pair(on_rgb, on_raw: dict, raws: np.ndarray, rgbs: np.ndarray, batch_size: int) -> Rows:
    teacher_probs = _batched(on_rgb, rgbs.astype(np.float32) / 255.0, batch_size)
    mosaics = raws[..., np.newaxis].astype(np.float32)
    top5 = {name: _top5(_batched(fn, mosaics, batch_size)) for name, fn in on_raw.items()}
    return Rows(teacher_probs.argmax(-1), teacher_probs.max(-1), top5)


def figures(rows: list[Rows], min_prob: float) -> dict:
    """{row: {agreement, agreement_top5, agreement_all, confident_tiles, tiles}} over all files' tiles (percent)."""
    if not rows:
        return {}
    t1 = np.concatenate([r.teacher_top1 for r in rows])
    sure = np.concatenate([r.teacher_prob for r in rows]) > min_prob
    out = {}
    for name in rows[0].top5:
        top5 = np.concatenate([r.top5[name] for r in rows])
        hit1, hit5 = top5[:, 0] == t1, (top5 == t1[:, None]).any(-1)
        out[name] = {
            "agreement": 100.0 * hit1[sure].mean() if sure.any() else None,
            "agreement_top5": 100.0 * hit5[sure].mean() if sure.any() else None,
            "agreement_all": 100.0 * hit1.mean() if len(t1) else None,
            "confident_tiles": int(sure.sum()),
            "tiles": int(len(t1)),
        }
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def format_table(result: dict) -> str:
    binned = f" after {result['bin']}x{result['bin']} binning" if result.get("bin", 1) > 1 else ""
    lines = [
        f"Agreement with the teacher on {result['pairs_read']} real RAW file(s) ({result['pairs']}), "
        f"{result['patch_size']} px tiles{binned}; teacher on {result['rgb_source']}; confident: teacher p > "
        f"{result['min_teacher_prob']:g}",
        "",
        "| row | agreement % | top-5 agreement % | confident tiles | agreement % (all tiles) | tiles |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, f in result["rows"].items():
        lines.append(
            f"| {name} | {_pct(f['agreement'])} | {_pct(f['agreement_top5'])} | {f['confident_tiles']} | "
            f"{_pct(f['agreement_all'])} | {f['tiles']} |"
        )
    lines += ["", "Per file (confident tiles / tiles; agreement % on confident tiles):", ""]
    names = list(result["rows"])
    lines.append("| file | tiles | " + " | ".join(names) + " |")
    lines.append("|---|---:|" + "---:|" * len(names))
    for f in result["files"]:
        cells = [_pct(f["rows"][n]["agreement"]) for n in names]
        lines.append(f"| {Path(f['raw']).name} | {f['confident_tiles']}/{f['tiles']} | " + " | ".join(cells) + " |")
    for s in result["skipped"]:
        lines.append(f"| {Path(s['raw']).name} | skipped: {s['error']} |" + " |" * len(names))
    return "\n".join(lines) + "\n"


def evaluate(
    pairs: str,
    students: list[str],
    out: str,
    teacher: str = "",
    mode: str = "merged",
    min_teacher_prob: float = 0.8,
    batch_size: int = 16,
    command: str = "",
    raw_format=None,
    bin_factor: int = 1,
) -> dict:
    from tqdm import tqdm

    from isp_keras.models import teachers

    start = time.time()
    loaded = load_students(students)
    first = next(iter(loaded.values()))
    teacher_path = teacher or first.teacher
    if not teacher_path:
        raise UserError("--teacher: the students' student.json names no teacher; give --teacher")
    teacher_model, _ = teachers.load_teacher(teacher_path)
    pair_cache.check_patch_size(teacher_model, first.image_size, teacher_path)
    listed = pairs_lib.list_pairs(pairs, mode)
    on_rgb, on_raw = classifiers(loaded, teacher_model)
    rows, files, skipped = [], [], []
    for pair in tqdm(listed, desc="real files", unit="file", disable=len(listed) < 2):
        try:
            mosaic, rgb = pairs_lib.aligned_pair(pair, first.cfa, raw_format)
        except UserError as exc:
            skipped.append({"raw": pair.raw, "error": str(exc)})
            continue
        mosaic, rgb = bin_pair(mosaic, rgb, bin_factor)
        raws, rgbs, _ = pairs_lib.cut_patches(mosaic, rgb, first.image_size)
        if not len(raws):
            skipped.append({"raw": pair.raw, "error": f"{mosaic.shape[1]}x{mosaic.shape[0]} holds no whole tile"})
            continue
        r = classify_pair(on_rgb, on_raw, raws, rgbs, batch_size)
        rows.append(r)
        per_file = figures([r], min_teacher_prob)
        files.append(
            {
                "raw": pair.raw,
                "rgb": pair.rgb,
                "tiles": len(raws),
                "confident_tiles": int((r.teacher_prob > min_teacher_prob).sum()),
                "rows": per_file,
            }
        )
    if not rows:
        first_error = skipped[0]["error"] if skipped else "none"
        raise UserError(f"{pairs}: none of the {len(listed)} file(s) gave a tile (first problem: {first_error})")
    rgb_source = "LibRaw's rendering" if all(p.rgb == pairs_lib.LIBRAW for p in listed) else "the pairs' RGB"
    result = {
        "command": command,
        "pairs": pairs,
        "mode": mode,
        "teacher": teacher_path,
        "students": dict(parse_students(students)),
        "rgb_source": rgb_source,
        "patch_size": first.image_size,
        "bin": bin_factor,
        "cfa": first.cfa,
        "min_teacher_prob": min_teacher_prob,
        "pairs_read": len(files),
        "rows": figures(rows, min_teacher_prob),
        "files": files,
        "skipped": skipped,
        "seconds": round(time.time() - start, 1),
    }
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    fsutil.write_json_atomic(folder / "results.json", result)
    fsutil.write_text_atomic(folder / "results.md", format_table(result))
    return result
