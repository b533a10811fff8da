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


def lines(spec: dict) -> dict:
    """How many output lines each edge's band holds."""
    return {side: spec["edges"][side]["lines"] for side in SIDES}


def frame_windows(spec: dict, out_hw: tuple) -> dict:
    """The output window ((row0, row1), (col0, col1)) of each frame piece with lines: top and bottom span the
    width, left and right the rows between them, so the pieces tile the frame without overlap."""
    ho, wo = out_hw
    n = lines(spec)
    middle = (n["top"], ho - n["bottom"])
    windows = {
        "top": ((0, n["top"]), (0, wo)),
        "bottom": ((ho - n["bottom"], ho), (0, wo)),
        "left": (middle, (0, n["left"])),
        "right": (middle, (wo - n["right"], wo)),
    }
    return {side: w for side, w in windows.items() if n[side] and w[0][1] > w[0][0]}


def crop(x: tf.Tensor, window: tuple) -> tf.Tensor:
    (r0, r1), (c0, c1) = window
    return x[:, r0:r1, c0:c1]


def stitch(x: tf.Tensor, pieces: dict, spec: dict) -> tf.Tensor:
    """`x` [B, Ho, Wo, C] with its frame replaced by `pieces` (one per frame window, `frame_windows`)."""
    if not pieces:
        return x
    ho, wo = int(x.shape[1]), int(x.shape[2])
    n = lines(spec)
    r0, r1 = n["top"], ho - n["bottom"]
    middle = [pieces.get("left"), x[:, r0:r1, n["left"] : wo - n["right"]], pieces.get("right")]
    middle = [part for part in middle if part is not None]
    rows = [pieces["top"]] if "top" in pieces else []
    if r1 > r0:
        rows.append(middle[0] if len(middle) == 1 else tf.concat(middle, axis=2))
    if "bottom" in pieces:
        rows.append(pieces["bottom"])
    return rows[0] if len(rows) == 1 else tf.concat(rows, axis=1)


def frame_terms(tiles: tf.Tensor, out_hw: tuple, spec: dict, weights: dict) -> dict:
    """The border term on each frame piece (`frame_windows`): the edges' bands with the corners in them, the
    left and right bands' ends moved into the top and bottom pieces that hold those outputs."""
    hi_, wi_, channels = int(tiles.shape[1]), int(tiles.shape[2]), int(tiles.shape[3])
    ho, wo = out_hw
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
    n = lines(spec)
    for rows_side in ("top", "bottom"):
        if rows_side not in bands:
            continue
        rows = slice(0, n["top"]) if rows_side == "top" else slice(ho - n["bottom"], ho)
        for cols_side in ("left", "right"):
            if cols_side in bands:
                start = 0 if cols_side == "left" else wo - n[cols_side]
                bands[rows_side] = _add_at(bands[rows_side], bands[cols_side][:, rows], 2, start)
    for side in ("left", "right"):
        if side in bands:
            bands[side] = bands[side][:, n["top"] : ho - n["bottom"]]
    return {side: bands[side] for side in frame_windows(spec, (ho, wo))}


def add(tiles: tf.Tensor, conv: tf.Tensor, spec: dict, weights: dict) -> tf.Tensor:
    """`conv` [B, Ho, Wo, C] (the packed convolution's output) plus the border term of the centred tiles
    [B, Hi, Wi, 4]. `spec` is the geometry (`geometry`), `weights` maps `weight_names(spec)` to kernels (native:
    convolution kernels per edge line, [n_in, n_out] matrices per corner)."""
    out_hw = (int(conv.shape[1]), int(conv.shape[2]))
    terms = frame_terms(tiles, out_hw, spec, weights)
    windows = frame_windows(spec, out_hw)
    return stitch(conv, {side: crop(conv, windows[side]) + term for side, term in terms.items()}, spec)


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
class FramedConv2D(layers.Conv2D):
    """The packed first convolution with its border term: a stride-1 Conv2D over the centred tiles zero-padded by
    `pads` ((top, bottom), (left, right)), then the activation, except on the frame (`frame_windows`), whose
    outputs are recomputed from the outermost tiles with the border term added before the activation.

    Recomputing the frame, rather than adding the term to the convolution's output, keeps that output's only
    consumer the activation, so TFLite fuses the two and the first stored int8 tensor is the activation's (for
    MobileNetV2's ReLU6, [0, 6]) instead of the pre-activation's wider range. `border` is the geometry
    (`geometry`); the border's kernels are weights named by `weight_names`."""

    def __init__(self, *args, border: dict, pads=((0, 0), (0, 0)), **kwargs):
        super().__init__(*args, **kwargs)
        if tuple(self.strides) != (1, 1) or self.padding != "valid":
            raise ValueError(f"FramedConv2D pads itself and has stride 1: got {self.strides}, {self.padding!r}")
        self.border = border
        self.pads = tuple(tuple(int(p) for p in side) for side in pads)

    def build(self, input_shape):
        super().build(input_shape)
        depth, channels = int(input_shape[-1]), self.filters
        self.border_kernels = {}
        for name in weight_names(self.border):
            if name in self.border["corners"]:
                corner = self.border["corners"][name]
                rows_side, cols_side = CORNERS[name]
                band = self.border["edges"][rows_side]["lines"] * self.border["edges"][cols_side]["lines"]
                shape = (corner["rows"] * corner["cols"] * depth, band * channels)
            else:
                edge = self.border["edges"][name.rsplit("_", 1)[0]]
                along, across = edge["width"], edge["depth"]
                shape = (across, along) if name.startswith(("top", "bottom")) else (along, across)
                shape = (*shape, depth, channels)
            self.border_kernels[name] = self.add_weight(shape=shape, initializer="zeros", name=name)

    def _conv(self, x: tf.Tensor, kernel, window=None) -> tf.Tensor:
        """The padded convolution plus bias over the output window ((row0, row1), (col0, col1)); None: all of it."""
        kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
        if window is None:
            if self.pads == (((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2):
                y = tf.nn.conv2d(x, kernel, 1, "SAME")
            else:
                y = tf.nn.conv2d(
                    tf.pad(x, [[0, 0], list(self.pads[0]), list(self.pads[1]), [0, 0]]), kernel, 1, "VALID"
                )
        else:
            begin, pads = [], [[0, 0]]
            for (o0, o1), (before, _), k, size in zip(window, self.pads, (kh, kw), x.shape[1:3]):
                lo, hi = o0 - before, o1 + k - 1 - before  # the input lines these outputs read
                begin.append((max(lo, 0), min(hi, int(size))))
                pads.append([max(-lo, 0), max(hi - int(size), 0)])
            (r0, r1), (c0, c1) = begin
            y = tf.nn.conv2d(tf.pad(x[:, r0:r1, c0:c1], pads + [[0, 0]]), kernel, 1, "VALID")
        return y + self.bias if self.use_bias else y

    def forward(self, x, kernel):
        """The layer's output with `kernel` for the main kernel (quantisation-aware training passes it rounded)."""
        x = tf.convert_to_tensor(x)
        y = self.activation(self._conv(x, kernel))
        if not self.border_kernels:
            return y
        out_hw = (int(y.shape[1]), int(y.shape[2]))
        kernels = {name: tf.convert_to_tensor(v) for name, v in self.border_kernels.items()}
        terms = frame_terms(x, out_hw, self.border, kernels)
        windows = frame_windows(self.border, out_hw)
        pieces = {side: self.activation(self._conv(x, kernel, windows[side]) + term) for side, term in terms.items()}
        return stitch(y, pieces, self.border)

    def call(self, inputs):
        return self.forward(inputs, self.kernel)

    # Conv2D saves only its kernel and bias: the border's kernels are stored after them, by name.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        for name, variable in self.border_kernels.items():
            store[name] = variable

    def load_own_variables(self, store):
        super().load_own_variables(store)
        for name, variable in self.border_kernels.items():
            variable.assign(store[name])

    def compute_output_shape(self, input_shape):
        (top, bottom), (left, right) = self.pads
        h, w = input_shape[1:3]
        padded = (input_shape[0], None if h is None else h + top + bottom, None if w is None else w + left + right)
        return super().compute_output_shape((*padded, input_shape[3]))

    def get_config(self) -> dict:
        return {**super().get_config(), "border": self.border, "pads": [list(p) for p in self.pads]}
