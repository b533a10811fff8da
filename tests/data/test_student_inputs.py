"""student_inputs: each kind's shape and what it makes from a mosaic, against the RAW ops; unknown kinds refused."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from isp_keras.data import normalisation, student_inputs
from isp_keras.raw import bayer

NORM = normalisation.Normalisation([0.3, 0.4, 0.2], [0.2, 0.25, 0.15], [0.5] * 3, [0.5] * 3, input_std=[0.6] * 3)


def test_each_kind_makes_an_input_of_its_shape():
    mosaic = tf.constant(np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 1)).astype(np.float32))
    for kind in student_inputs.STUDENT_INPUTS.values():
        assert kind.make(mosaic, "GRBG", NORM).shape == (2, *kind.shape(8))
    infill = student_inputs.get("infill").make(mosaic, "GRBG", NORM)
    expected = bayer.raw_to_input(mosaic, "GRBG", *NORM.student_stats())
    np.testing.assert_array_equal(infill.numpy(), expected.numpy())
    np.testing.assert_array_equal(student_inputs.get("packed").make(mosaic, "GRBG", NORM), bayer.pack(mosaic))
    bgr = student_inputs.get("infill").make(
        mosaic, "GRBG", normalisation.Normalisation(**{**NORM.to_json(), "channel_order": "BGR"})
    )
    np.testing.assert_array_equal(bgr.numpy(), expected.numpy()[..., ::-1])
    assert student_inputs.NAMES == ("infill", "packed")
    with pytest.raises(ValueError, match="unknown student input 'tiles'; expected infill or packed"):
        student_inputs.get("tiles")
