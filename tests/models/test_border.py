"""The border term of packed first layers: the geometry read off a probe, its assembly, bad maps, the layer."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from isp_keras.models import border


def edge_map(size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A linear map [H, W, 4, H, W, C] of the kind a packed stem's border is: each output on the frame reads the
    tiles within one of it on the outermost tile row or column, with weights that depend only on which edge (and
    at the corners on both, plus a term of their own)."""
    rng = np.random.default_rng(seed)
    kernels = {side: rng.normal(size=(3, 3, 4, channels)) for side in border.SIDES}
    d = np.zeros((size, size, 4, size, size, channels))
    frame = {"top": lambda y, x: y == 0, "bottom": lambda y, x: y == size - 1,
             "left": lambda y, x: x == 0, "right": lambda y, x: x == size - 1}  # fmt: skip
    for side, on in frame.items():
        for y in range(size):
            for x in range(size):
                if not on(y, x):
                    continue
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        iy, ix = y + dy, x + dx
                        if 0 <= iy < size and 0 <= ix < size and on(iy, ix):
                            d[iy, ix, :, y, x] += kernels[side][dy + 1, dx + 1]
    for y in (0, size - 1):
        for x in (0, size - 1):
            d[y, x, :, y, x] += rng.normal(size=(4, channels))  # what only a corner has (say, its own gain)
    return d


def assemble(d: np.ndarray, spec: dict, weights: dict) -> np.ndarray:
    h, w, cin, ho, wo, cout = d.shape
    eye = tf.constant(np.eye(h * w * cin).reshape(-1, h, w, cin))
    zero = tf.zeros([h * w * cin, ho, wo, cout], tf.float64)
    out = border.add(eye, zero, spec, {k: tf.constant(v, tf.float64) for k, v in weights.items()})
    return np.asarray(out).reshape(d.shape)


def test_geometry_reassembles_an_edge_and_corner_map():
    d = edge_map(10)
    spec, weights = border.geometry(d)
    assert all(spec["edges"][side]["lines"] == 1 and spec["edges"][side]["depth"] == 1 for side in border.SIDES)
    assert set(spec["corners"]) == set(border.CORNERS)
    assert list(weights) == border.weight_names(spec)
    np.testing.assert_allclose(assemble(d, spec, weights), d, atol=1e-6)


def test_a_map_that_is_not_edge_and_corner_is_refused():
    d = edge_map(10)
    d[4, 5, 0, 5, 5, 0] = 1.0  # an interior output reading an interior tile
    with pytest.raises(ValueError, match="not an edge-and-corner map at 20 px"):
        border.geometry(d)


def test_no_difference_gives_no_border():
    spec, weights = border.geometry(np.zeros((6, 6, 4, 6, 6, 2)))
    assert spec == border.no_border() and weights == {} and border.weight_names(spec) == []


@pytest.mark.parametrize("before, after", [(2, 1), (-1, 0), (1, -2), (0, 0)])
def test_fit_pads_or_crops(before, after):
    x = tf.reshape(tf.range(5.0), [1, 5])
    got = border._fit(x, 1, before, after).numpy()[0]
    expected = np.pad(np.arange(5.0)[max(-before, 0) : 5 - max(-after, 0)], (max(before, 0), max(after, 0)))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("start, n", [(0, 2), (3, 2), (5, 1), (0, 6)])
def test_add_at_adds_to_one_slice_only(start, n):
    x = np.arange(12.0).reshape(2, 6)
    term = np.full((2, n), 10.0)
    expected = x.copy()
    expected[:, start : start + n] += term
    np.testing.assert_array_equal(border._add_at(tf.constant(x), tf.constant(term), 1, start).numpy(), expected)


def framed_layer(d: np.ndarray, kernel: np.ndarray, pads, activation: str) -> border.FramedConv2D:
    spec, weights = border.geometry(d)
    layer = border.FramedConv2D(
        kernel.shape[-1], kernel.shape[:2], activation=activation, border=spec, pads=pads, name="stem"
    )
    layer.build((None, d.shape[0], d.shape[1], 4))
    layer.set_weights(
        [kernel, np.full(kernel.shape[-1], 0.1, np.float32)] + [weights[n] for n in border.weight_names(spec)]
    )
    return layer


@pytest.mark.parametrize("pads, activation", [(((1, 1), (1, 1)), "relu6"), (((2, 0), (0, 2)), "linear")])
def test_framed_convolution_adds_the_border_before_its_activation(pads, activation):
    """conv(pad(tiles)) + bias + border(tiles), then the activation: the frame recomputed from the outermost
    tiles equals the border added to the whole convolution's output, for SAME-like and one-sided padding."""
    d = edge_map(8, channels=2)
    kernel = np.random.default_rng(3).normal(size=(3, 3, 4, 2)).astype(np.float32)
    layer = framed_layer(d, kernel, pads, activation)
    tiles = np.random.default_rng(1).normal(size=(2, 8, 8, 4)).astype(np.float32)
    conv = tf.nn.conv2d(np.pad(tiles, [[0, 0], pads[0], pads[1], [0, 0]]), kernel, 1, "VALID").numpy() + 0.1
    expected = conv + np.einsum("byxi,yxiovc->bovc", tiles, d)
    if activation == "relu6":
        expected = np.clip(expected, 0, 6)
    got = layer(tiles).numpy()
    assert got.shape == layer.compute_output_shape(tiles.shape) == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)
    copy = border.FramedConv2D.from_config(layer.get_config())
    copy.build(tiles.shape)
    copy.set_weights(layer.get_weights())
    np.testing.assert_array_equal(copy(tiles).numpy(), got)


def test_framed_convolution_fuses_its_activation_in_tflite():
    """The convolution over the whole image feeds only its ReLU6, so TFLite fuses them: its output is never
    stored before the activation (the frame's own small convolutions are)."""
    import tflite as tflite_schema

    from isp_keras.models import tflite_reader

    d = edge_map(8, channels=2)
    layer = framed_layer(
        d, np.random.default_rng(3).normal(size=(3, 3, 4, 2)).astype(np.float32), ((1, 1), (1, 1)), "relu6"
    )
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, layer(inputs))
    flat = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    parsed = tflite_schema.Model.GetRootAs(flat, 0)
    graph = parsed.Subgraphs(0)
    convs = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if tflite_reader.opcode_name(parsed, op) == "CONV_2D":
            options = tflite_schema.Conv2DOptions()
            options.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
            convs.append((tuple(graph.Tensors(int(op.Outputs(0))).ShapeAsNumpy()), options.FusedActivationFunction()))
    relu6 = tflite_schema.ActivationFunctionType.RELU6
    assert ((1, 8, 8, 2), relu6) in convs, convs
