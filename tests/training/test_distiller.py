"""The Distiller: loss definition, which weights move, metrics, teacher labels."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from isp_keras.models import architectures, students, teachers
from isp_keras.training import distiller


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


LOGITS_S = np.array([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 3.0, -2.0], [-1.0, 1.0, 0.0, 4.0]], np.float32)
LOGITS_T = np.array([[1.0, 0.0, 2.0, -1.0], [0.0, 0.0, 1.0, 1.0], [3.0, -1.0, 0.5, 0.5]], np.float32)
LABELS = np.array([0, 2, 1], np.int32)


def test_alpha_one_is_plain_cross_entropy():
    total, ce, _ = distiller.distillation_losses(LOGITS_S, LOGITS_T, LABELS, alpha=1.0, temperature=4.0)
    ref = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(LABELS, LOGITS_S)
    np.testing.assert_allclose(total.numpy(), ref.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ce.numpy(), -np_log_softmax(LOGITS_S)[np.arange(3), LABELS].mean(), rtol=1e-6)


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_alpha_zero_is_t_squared_kl(t):
    total, _, kd = distiller.distillation_losses(LOGITS_S, LOGITS_T, LABELS, alpha=0.0, temperature=t)
    log_pt, log_ps = np_log_softmax(LOGITS_T / t), np_log_softmax(LOGITS_S / t)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1).mean()
    np.testing.assert_allclose(kd.numpy(), kl, rtol=1e-5)
    np.testing.assert_allclose(total.numpy(), t * t * kl, rtol=1e-5)


def test_mixture_and_zero_kd_when_identical():
    total, ce, kd = distiller.distillation_losses(LOGITS_S, LOGITS_T, LABELS, alpha=0.9, temperature=4.0)
    np.testing.assert_allclose(total.numpy(), 0.9 * ce.numpy() + 0.1 * 16 * kd.numpy(), rtol=1e-6)
    _, _, kd_same = distiller.distillation_losses(LOGITS_T, LOGITS_T, LABELS, 0.5, 4.0)
    assert abs(float(kd_same)) < 1e-6


def test_bad_hyperparameters_are_refused():
    teacher = architectures.build("resnet_tiny", 4)
    student = students.student_from_teacher(teacher)
    for kwargs, match in [
        ({"alpha": 1.5}, "alpha"),
        ({"temperature": 0.0}, "temperature"),
        ({"hard_labels": "soft"}, "hard_labels"),
    ]:
        with pytest.raises(ValueError, match=match):
            distiller.Distiller(student, teacher, **kwargs)


def _tiny_batches(n_batches=3, batch=8, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(n_batches * batch, 16, 16, 3)).astype(np.float32)
    xt = rng.normal(size=(n_batches * batch, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, classes, n_batches * batch).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices(((xs, xt), y)).batch(batch)


def test_training_moves_the_student_and_never_the_teacher():
    keras.utils.set_random_seed(0)
    teacher = architectures.build("resnet_tiny", 4, image_size=16)
    student = students.student_from_teacher(teacher)
    teachers.freeze(teacher)
    teacher_before = [w.numpy().copy() for w in teacher.weights]  # includes BN moving statistics
    student_before = [w.numpy().copy() for w in student.trainable_weights]
    model = distiller.Distiller(student, teacher, alpha=0.9, temperature=4.0)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    history = model.fit(_tiny_batches(), epochs=2, verbose=0)
    for before, after in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(before, after.numpy())
    moved = [np.abs(b - a.numpy()).max() for b, a in zip(student_before, student.trainable_weights)]
    assert min(moved) > 0, "every trainable student weight should move"
    assert set(history.history) == {"loss", "ce", "kd", "top1", "top5", "agreement"}
    assert all(np.isfinite(v).all() for v in history.history.values())
    # A test step reports the same metric names, agreement in [0, 1].
    logs = model.evaluate(_tiny_batches(seed=1), verbose=0, return_dict=True)
    assert 0.0 <= logs["agreement"] <= 1.0 and 0.0 <= logs["top1"] <= logs["top5"] <= 1.0


def test_a_teacher_of_the_student_input_sees_the_student_input():
    """A float student teaching its quantisation-aware copy: the teacher's logits come from the student's input
    (the RGB teacher input is not used), in the loss, the hard targets and the agreement."""
    keras.utils.set_random_seed(0)
    teacher = architectures.build("resnet_tiny", 4, image_size=16)
    student = students.student_from_teacher(teacher)
    ds = _tiny_batches(n_batches=1)
    (xs, xt), y = next(iter(ds))
    model = distiller.Distiller(student, teacher, 0.5, 4.0, "teacher", teacher_sees_student_input=True)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    got = model.evaluate(ds, verbose=0, return_dict=True)
    s_logits, t_logits = student(xs, training=False).numpy(), teacher(xs, training=False).numpy()
    total, ce, kd = distiller.distillation_losses(s_logits, t_logits, t_logits.argmax(-1), 0.5, 4.0)
    np.testing.assert_allclose([got["loss"], got["ce"], got["kd"]], [total, ce, kd], rtol=1e-5, atol=1e-7)
    assert got["agreement"] == 1.0 and abs(got["kd"]) < 1e-6  # the same weights on the same input
    other = distiller.Distiller(student, teacher, 0.5, 4.0, "teacher")
    other.compile(optimizer=keras.optimizers.SGD(0.0))
    rgb = other.evaluate(ds, verbose=0, return_dict=True)  # the RGB teacher input: another image
    assert rgb["kd"] > 1e-4 and not np.allclose(teacher(xt, training=False), t_logits)
    with pytest.raises(ValueError, match="cached logits are the RGB teacher's"):
        distiller.Distiller(student, teacher, cached_logits=True, teacher_sees_student_input=True)


def test_teacher_labels_use_the_teachers_argmax():
    teacher = architectures.build("resnet_tiny", 4, image_size=16)
    student = students.student_from_teacher(teacher)
    model = distiller.Distiller(student, teacher, alpha=1.0, hard_labels="teacher")
    t = model.teacher_logits(tf.zeros([2, 16, 16, 3]))
    np.testing.assert_array_equal(model.hard_targets(tf.constant([3, 3]), t).numpy(), np.argmax(t.numpy(), -1))
    model_gt = distiller.Distiller(student, teacher, alpha=1.0, hard_labels="gt")
    np.testing.assert_array_equal(model_gt.hard_targets(tf.constant([3, 1]), t).numpy(), [3, 1])


def test_evaluate_counts_against_numpy():
    teacher = architectures.build("resnet_tiny", 4, image_size=16)
    ds = _tiny_batches(n_batches=2, batch=5)
    got = distiller.evaluate(ds, teacher, teacher, on="student")
    logits_s, logits_t, labels = [], [], []
    for (xs, xt), y in ds:
        logits_s.append(teacher(xs, training=False).numpy())
        logits_t.append(teacher(xt, training=False).numpy())
        labels.append(y.numpy())
    s, t, y = map(np.concatenate, (logits_s, logits_t, labels))
    assert got["count"] == 10
    assert got["top1"] == pytest.approx(100 * np.mean(s.argmax(-1) == y))
    top5 = np.argsort(-s, -1)[:, :4]  # 4 classes: top-5 is top-4
    assert got["top5"] == pytest.approx(100 * np.mean([y[i] in top5[i] for i in range(10)]))
    assert got["agreement"] == pytest.approx(100 * np.mean(s.argmax(-1) == t.argmax(-1)))


def test_optimizer_state_round_trip(tmp_path):
    model = architectures.build("resnet_tiny", 4, image_size=16)
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    opt.build(model.trainable_variables)
    for v in opt.variables:
        v.assign(tf.random.normal(v.shape) if "float" in str(v.dtype) else tf.ones(v.shape, v.dtype) * 7)
    distiller.save_optimizer_state(opt, tmp_path / "opt.npz")
    opt2 = keras.optimizers.SGD(0.1, momentum=0.9)
    distiller.load_optimizer_state(opt2, model.trainable_variables, tmp_path / "opt.npz")
    for a, b in zip(opt.variables, opt2.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


class Fixed(keras.Model):
    """Returns a fixed logits row per example index: the input is the index."""

    def __init__(self, logits):
        super().__init__()
        self.table = tf.constant(logits)

    def call(self, x, training=False):
        return tf.gather(self.table, tf.cast(x[:, 0], tf.int32))


def test_evaluate_restricted_to_a_class_subset_and_unlabelled_examples_against_numpy():
    rng = np.random.default_rng(0)
    n, classes, subset = 40, 12, [2, 5, 7, 11]
    s, t = rng.normal(size=(2, n, classes)).astype(np.float32)
    y = rng.choice(subset, n).astype(np.int32)
    y[::4] = -1  # unlabelled examples: left out of accuracy, kept in agreement
    idx = np.arange(n, dtype=np.float32)[:, None]
    ds = tf.data.Dataset.from_tensor_slices(((idx, idx), y)).batch(16)
    got = distiller.evaluate(ds, Fixed(t), Fixed(s), on="student", subset=subset)
    lab = y >= 0

    def in_top(k, scores, target):
        return np.array([target[i] in np.argsort(-scores[i])[:k] for i in range(len(target))])

    inner = np.array([subset.index(v) if v >= 0 else -1 for v in y])
    restricted = s[:, subset]
    assert got["count"] == n and got["labelled"] == lab.sum()
    assert got["top1"] == pytest.approx(100 * in_top(1, s, y)[lab].mean())
    assert got["top5"] == pytest.approx(100 * in_top(5, s, y)[lab].mean())
    assert got["top1_subset"] == pytest.approx(100 * in_top(1, restricted, inner)[lab].mean())
    assert got["top5_subset"] == pytest.approx(100 * in_top(4, restricted, inner)[lab].mean())  # 4 classes: top-4
    assert got["top1_subset"] > got["top1"]
    assert got["agreement"] == pytest.approx(100 * (s.argmax(-1) == t.argmax(-1)).mean())
    assert got["agreement_top5"] == pytest.approx(100 * in_top(5, s, t.argmax(-1)).mean())
    none = distiller.evaluate(ds.map(lambda x, _: (x, tf.fill([tf.shape(_)[0]], -1))), Fixed(t), Fixed(s))
    assert none["top1"] is None and none["top5"] is None and none["labelled"] == 0
    assert none["agreement"] == pytest.approx(got["agreement"])


def test_gradient_scales_are_per_variable_learning_rates():
    """One plain-SGD step from the same start: a variable with scale s moves exactly s times as far as unscaled, every
    other variable as far; the scales reach a packed student's RAW adapter and its quantisation-aware view."""
    from isp_keras.models import adapter, packed
    from isp_keras.training import experiment, quantise

    keras.utils.set_random_seed(0)
    teacher = architectures.build("resnet_tiny", 4, image_size=16)
    packing = packed.Packing("RGGB", (0.3, 0.4, 0.3), (0.2, 0.2, 0.2), "RGB", 16, "curve")
    teachers.freeze(teacher)
    (x, t), y = next(iter(_tiny_batches()))
    batch = tf.data.Dataset.from_tensors(((tf.nn.space_to_depth(x[..., :1], 2), t), y))
    scales = experiment.adapter_gradient_scales(students.student_from_teacher(teacher, packing=packing), 10.0)
    assert experiment.adapter_gradient_scales(students.student_from_teacher(teacher, packing=packing), 1.0) == {}
    moves = []
    for gradient_scales in ({}, scales):
        student = students.student_from_teacher(teacher, packing=packing)
        before = {v.path: v.numpy().copy() for v in student.trainable_weights}
        model = distiller.Distiller(student, teacher, gradient_scales=gradient_scales)
        model.compile(optimizer=keras.optimizers.SGD(0.1))  # moves far above float32 rounding at 1.0
        model.fit(batch, epochs=1, verbose=0)
        moves.append({v.path: v.numpy() - before[v.path] for v in student.trainable_weights})
    adapted = {v.path for layer in adapter.parts(student).values() for v in layer.trainable_weights}
    assert set(scales) == adapted and len(adapted) == 5  # gain kernel and bias, curve start and slopes, mix
    for path, plain in moves[0].items():
        factor = 10.0 if path in adapted else 1.0
        np.testing.assert_allclose(moves[1][path], factor * plain, rtol=1e-3, atol=1e-6)
    assert max(np.abs(moves[0][p]).max() for p in adapted) > 0
    qat = quantise.quantisation_aware(student)
    assert adapted <= {v.path for v in qat.trainable_weights}
