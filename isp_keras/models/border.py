"""The exact border of a packed first layer (models/packed.py).

Inside the image the packed convolution equals the teacher's first convolution over normalise(infill(mosaic)); on
the image's frame it does not: there the infill renormalises over the samples that exist and the teacher's
convolution zero-pads the normalised image, and no padding of the tiles gives both. The difference is linear in the
centred tiles, reads only the outermost tiles, reaches only the outermost outputs, and away from the corners it is
the same all along an edge. So it is a small convolution per edge over a strip of tiles (one per output line of the
edge's band) plus a dense map per corner, added to the packed convolution's output. They are found by probing the
exact path and the packed one with unit impulses on a small image in float64, and checked against the whole probe,
so the packed student starts equal to the infill student everywhere; training then moves them with the rest.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

SIDES = ("top", "bottom", "left", "right")
CORNERS = {"top_left": ("top", "left"), "top_right": ("top", "right"),
           "bottom_left": ("bottom", "left"), "bottom_right": ("bottom", "right")}  # fmt: skip
PROBE_SIZE = 24  # the probe image's side: large enough that the four bands and corners stay apart
SUPPORT = 1e-6  # of the largest difference: below it an entry is rounding (the infill's float32 constants)
CHECK = 1e-5  # of the largest difference: the assembled border must match the probe this closely


def no_border() -> dict:
    """The geometry of no border term: every edge without lines, no corners."""
    return {"edges": {side: {"lines": 0, "depth": 0, "offset": 0, "width": 0} for side in SIDES}, "corners": {}}


def _to_top(d: np.ndarray, side: str) -> np.ndarray:
    """The probe's difference [Hi, Wi, 4, Ho, Wo, C] seen with `side` at the top (the along-edge axis kept)."""
    if side in ("left", "right"):
        d = d.transpose(1, 0, 2, 4, 3, 5)
    if side in ("bottom", "right"):
        d = d[::-1, :, :, ::-1]
    return d


def _edge(d: np.ndarray, tol: float) -> tuple[dict, list]:
    """The top edge's geometry and its kernels [depth, width, 4, C] (one per output line) in that frame: output
    (line k, column j) reads the `depth` outermost tile rows at columns j + offset ... j + offset + width - 1."""
    j0 = d.shape[4] // 2  # a column away from the other edges
    active = np.abs(d[:, :, :, :, j0]).max(axis=(0, 1, 2, 4)) > tol  # per output row
    lines = int(np.argmin(active)) if not active.all() else len(active)
    if lines == 0:
        return no_border()["edges"]["top"], []
    reach = np.abs(d[:, :, :, :lines, j0]).max(axis=(2, 3, 4)) > tol  # [Hi, Wi]
    depth = int(np.nonzero(reach.any(axis=1))[0].max()) + 1
    cols = np.nonzero(reach.any(axis=0))[0]
    lo, hi = int(cols.min()) - j0, int(cols.max()) - j0
    kernels = [d[:depth, j0 + lo : j0 + hi + 1, :, k, j0, :] for k in range(lines)]
    return {"lines": lines, "depth": depth, "offset": lo, "width": hi - lo + 1}, kernels


def _native(kernel: np.ndarray, side: str) -> np.ndarray:
    """A top-frame edge kernel [depth, width, 4, C] as a convolution kernel over the side's own strip."""
    if side in ("left", "right"):
        kernel = kernel.transpose(1, 0, 2, 3)
    if side == "bottom":
        kernel = kernel[::-1]
    if side == "right":
        kernel = kernel[:, ::-1]
    return np.ascontiguousarray(kernel)


def _fit(x: tf.Tensor, axis: int, before: int, after: int) -> tf.Tensor:
    """Zero-pad (positive) or crop (negative) `x` along `axis`."""
    if before < 0 or after < 0:
        begin = [0] * x.shape.rank
        size = [-1] * x.shape.rank
        begin[axis] = max(-before, 0)
        size[axis] = int(x.shape[axis]) - max(-before, 0) - max(-after, 0)
        x = tf.slice(x, begin, size)
    if before > 0 or after > 0:
        pads = [[0, 0]] * x.shape.rank
        pads[axis] = [max(before, 0), max(after, 0)]
        x = tf.pad(x, pads)
    return x


def _add_at(x: tf.Tensor, term: tf.Tensor, axis: int, start: int) -> tf.Tensor:
    """x with `term` added to its slice [start, start + len(term)) along `axis`: the slice and its neighbours
    concatenated, so only the frame is touched (one copy of x, not a full-size add per term)."""
    n, size = int(term.shape[axis]), int(x.shape[axis])

    def part(lo, hi):
        begin, length = [0] * x.shape.rank, [-1] * x.shape.rank
        begin[axis], length[axis] = lo, hi - lo
        return tf.slice(x, begin, length)

    pieces = [part(0, start)] if start else []
    pieces.append(part(start, start + n) + term)
    if start + n < size:
        pieces.append(part(start + n, size))
    return pieces[0] if len(pieces) == 1 else tf.concat(pieces, axis=axis)


def _edge_terms(tiles: tf.Tensor, out_hw: tuple, spec: dict, weights: dict) -> dict:
    """Each edge's band [B, lines, Wo, C] (top, bottom) or [B, Ho, lines, C] (left, right), corners not included."""
    hi_, wi_ = int(tiles.shape[1]), int(tiles.shape[2])
    ho, wo = out_hw
    bands = {}
    for side in SIDES:
        edge = spec["edges"][side]
        n, depth, lo, width = edge["lines"], edge["depth"], edge["offset"], edge["width"]
        if not n:
            continue
        across = side in ("top", "bottom")  # the edge runs along the columns
        length_in, length_out = (wi_, wo) if across else (hi_, ho)
        if side == "top":
            strip = tiles[:, :depth]
        elif side == "bottom":
            strip = tiles[:, hi_ - depth :]
        elif side == "left":
            strip = tiles[:, :, :depth]
        else:
            strip = tiles[:, :, wi_ - depth :]
        strip = _fit(strip, 2 if across else 1, -lo, length_out - 1 + lo + width - 1 - (length_in - 1))
        outs = [tf.nn.conv2d(strip, weights[f"{side}_{k}"], 1, "VALID") for k in range(n)]
        if side in ("bottom", "right"):
            outs = outs[::-1]
        bands[side] = outs[0] if n == 1 else tf.concat(outs, axis=1 if across else 2)
    return bands


def add(tiles: tf.Tensor, conv: tf.Tensor, spec: dict, weights: dict) -> tf.Tensor:
    """`conv` [B, Ho, Wo, C] (the packed convolution's output) plus the border term of the centred tiles
    [B, Hi, Wi, 4]. `spec` is the geometry (`geometry`), `weights` maps `weight_names(spec)` to kernels (native:
    convolution kernels per edge line, [n_in, n_out] matrices per corner)."""
    hi_, wi_, channels = int(tiles.shape[1]), int(tiles.shape[2]), int(tiles.shape[3])
    ho, wo = int(conv.shape[1]), int(conv.shape[2])
    bands = _edge_terms(tiles, (ho, wo), spec, weights)
    for name, (rows_side, cols_side) in CORNERS.items():
        corner = spec["corners"].get(name)
        if not corner:
            continue
        nr, nc = corner["rows"], corner["cols"]
        br, bc = spec["edges"][rows_side]["lines"], spec["edges"][cols_side]["lines"]
        r0 = 0 if rows_side == "top" else hi_ - nr
        c0 = 0 if cols_side == "left" else wi_ - nc
        patch = tf.reshape(tiles[:, r0 : r0 + nr, c0 : c0 + nc], [-1, nr * nc * channels])
        block = tf.reshape(tf.matmul(patch, weights[name]), [-1, br, bc, weights[name].shape[-1] // (br * bc)])
        bands[rows_side] = _add_at(bands[rows_side], block, 2, 0 if cols_side == "left" else wo - bc)
    for side, axis, length in (("left", 2, wo), ("right", 2, wo), ("top", 1, ho), ("bottom", 1, ho)):
        if side in bands:
            start = 0 if side in ("left", "top") else length - int(bands[side].shape[axis])
            conv = _add_at(conv, bands[side], axis, start)
    return conv


def weight_names(spec: dict) -> list[str]:
    """The border's weights in a fixed order: each edge's lines, then the corners."""
    names = [f"{side}_{k}" for side in SIDES for k in range(spec["edges"][side]["lines"])]
    return names + [name for name in CORNERS if spec["corners"].get(name)]


def geometry(difference: np.ndarray) -> tuple[dict, dict]:
    """(spec, native weights) of the border from the probe's difference, exact minus packed, as a linear map
    [Hi, Wi, 4, Ho, Wo, C] from centred tiles to the packed convolution's output; or ValueError when it is not an
    edge-and-corner map at this size (the image is too small for the stem)."""
    d = np.asarray(difference, np.float64)
    scale = np.abs(d).max()
    if scale == 0:
        return no_border(), {}
    tol = SUPPORT * scale
    edges, weights = {}, {}
    for side in SIDES:
        edges[side], kernels = _edge(_to_top(d, side), tol)
        for k, kernel in enumerate(kernels):
            weights[f"{side}_{k}"] = _native(kernel, side)
    spec = {"edges": edges, "corners": {}}
    hi_, wi_, cin, ho, wo, cout = d.shape
    eye = np.eye(hi_ * wi_ * cin).reshape(-1, hi_, wi_, cin)
    zero = tf.zeros([len(eye), ho, wo, cout], tf.float64)
    edge_terms = add(tf.constant(eye), zero, spec, {k: tf.constant(v) for k, v in weights.items()})
    residual = d - np.asarray(edge_terms).reshape(hi_, wi_, cin, ho, wo, cout)
    for name, (rows_side, cols_side) in CORNERS.items():
        br, bc = edges[rows_side]["lines"], edges[cols_side]["lines"]
        if not (br and bc):
            continue
        rows = slice(0, br) if rows_side == "top" else slice(ho - br, ho)
        cols = slice(0, bc) if cols_side == "left" else slice(wo - bc, wo)
        block = residual[:, :, :, rows, cols]
        reach = np.abs(block).max(axis=(2, 3, 4, 5)) > tol
        if not reach.any():
            continue
        ys, xs = np.nonzero(reach)
        nr = int(ys.max()) + 1 if rows_side == "top" else hi_ - int(ys.min())
        nc = int(xs.max()) + 1 if cols_side == "left" else wi_ - int(xs.min())
        r0 = 0 if rows_side == "top" else hi_ - nr
        c0 = 0 if cols_side == "left" else wi_ - nc
        spec["corners"][name] = {"rows": nr, "cols": nc}
        weights[name] = block[r0 : r0 + nr, c0 : c0 + nc].reshape(nr * nc * cin, br * bc * cout)
    assembled = add(tf.constant(eye), zero, spec, {k: tf.constant(v) for k, v in weights.items()})
    error = np.abs(d - np.asarray(assembled).reshape(d.shape)).max()
    if error > CHECK * scale:
        raise ValueError(f"the border is not an edge-and-corner map at {2 * hi_} px (error {error / scale:.1e})")
    return spec, {name: weights[name].astype(np.float32) for name in weight_names(spec)}


@keras.saving.register_keras_serializable(package="isp_keras")
class BorderCorrection(layers.Layer):
    """conv + border(tiles) for inputs [centred tiles, the packed convolution's output before any depth-to-space]:
    the part of conv(normalise(infill(mosaic))) the packed convolution misses on the frame (`geometry`)."""

    def __init__(self, spec: dict, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec

    def build(self, shapes):
        tiles, conv = shapes
        channels, depth = int(conv[-1]), int(tiles[-1])
        self.kernels = {}
        for name in weight_names(self.spec):
            if name in self.spec["corners"]:
                corner = self.spec["corners"][name]
                rows_side, cols_side = CORNERS[name]
                band = self.spec["edges"][rows_side]["lines"] * self.spec["edges"][cols_side]["lines"]
                shape = (corner["rows"] * corner["cols"] * depth, band * channels)
            else:
                side = name.rsplit("_", 1)[0]
                edge = self.spec["edges"][side]
                along, across = edge["width"], edge["depth"]
                shape = (across, along) if side in ("top", "bottom") else (along, across)
                shape = (*shape, depth, channels)
            self.kernels[name] = self.add_weight(shape=shape, initializer="zeros", name=name)

    def call(self, inputs):
        tiles, conv = inputs
        kernels = {name: keras.ops.convert_to_tensor(v) for name, v in self.kernels.items()}
        return add(tiles, conv, self.spec, kernels)

    def compute_output_shape(self, shapes):
        return shapes[1]

    def get_config(self) -> dict:
        return {**super().get_config(), "spec": self.spec}
