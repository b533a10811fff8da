"""The Distiller: a frozen RGB teacher and a RAW student trained with hard-label CE plus temperature-scaled KD.

    L = alpha * CE(hard, student) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

It receives ((student_input, teacher_input), label) and knows nothing about where the data comes from. With
`cached_logits=True` the teacher input *is* the teacher's logits (precomputed) and the teacher is not run; with
`teacher_sees_student_input=True` the teacher is a model of the student's input (a float student teaching its own
quantisation-aware copy) and the teacher input is not used.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

HARD_LABELS = ("gt", "teacher")


def distillation_losses(student_logits, teacher_logits, labels, alpha: float, temperature: float):
    """Per-batch means (unscaled for replicas): (total, ce, kd). `labels` are the hard targets (int)."""
    student_logits = tf.cast(student_logits, tf.float32)
    teacher_logits = tf.cast(teacher_logits, tf.float32)
    ce = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=student_logits)
    )
    t = temperature
    p_teacher = tf.nn.softmax(teacher_logits / t)
    kl = tf.reduce_sum(
        p_teacher * (tf.nn.log_softmax(teacher_logits / t) - tf.nn.log_softmax(student_logits / t)), axis=-1
    )
    kd = tf.reduce_mean(kl)
    total = alpha * ce + (1.0 - alpha) * t * t * kd
    return total, ce, kd


class Distiller(keras.Model):
    def __init__(
        self,
        student: keras.Model,
        teacher: keras.Model,
        alpha: float = 0.9,
        temperature: float = 4.0,
        hard_labels: str = "gt",
        cached_logits: bool = False,
        gradient_scales: dict | None = None,
        teacher_sees_student_input: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if hard_labels not in HARD_LABELS:
            raise ValueError(f"hard_labels must be one of {HARD_LABELS}, got {hard_labels!r}")
        if cached_logits and teacher_sees_student_input:
            raise ValueError("cached_logits and teacher_sees_student_input: the cached logits are the RGB teacher's")
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.hard_labels = hard_labels
        self.cached_logits = cached_logits
        self.teacher_sees_student_input = teacher_sees_student_input
        # variable path -> factor on its gradient: under (momentum) SGD, that variable's own learning rate
        self.gradient_scales = dict(gradient_scales or {})
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.ce_tracker = keras.metrics.Mean(name="ce")
        self.kd_tracker = keras.metrics.Mean(name="kd")
        self.top1 = keras.metrics.SparseTopKCategoricalAccuracy(k=1, name="top1")
        self.top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")
        self.agreement = keras.metrics.Mean(name="agreement")

    @property
    def metrics(self):
        return [self.loss_tracker, self.ce_tracker, self.kd_tracker, self.top1, self.top5, self.agreement]

    def call(self, inputs, training=False):
        student_x = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        return self.student(student_x, training=training)

    def teacher_logits(self, teacher_x, student_x=None):
        if self.teacher_sees_student_input:
            return tf.stop_gradient(self.teacher(student_x, training=False))
        if self.cached_logits:
            return tf.stop_gradient(teacher_x)
        return tf.stop_gradient(self.teacher(teacher_x, training=False))

    def hard_targets(self, labels, teacher_logits):
        if self.hard_labels == "teacher":
            return tf.argmax(teacher_logits, axis=-1, output_type=tf.int32)
        return labels

    def _update_metrics(self, total, ce, kd, labels, student_logits, teacher_logits):
        self.loss_tracker.update_state(total)
        self.ce_tracker.update_state(ce)
        self.kd_tracker.update_state(kd)
        labels = tf.cast(labels, tf.int32)
        labelled = tf.cast(labels >= 0, tf.float32)  # unlabelled data: these two stay 0
        self.top1.update_state(tf.maximum(labels, 0), student_logits, sample_weight=labelled)
        self.top5.update_state(tf.maximum(labels, 0), student_logits, sample_weight=labelled)
        agree = tf.equal(tf.argmax(student_logits, -1), tf.argmax(teacher_logits, -1))
        self.agreement.update_state(tf.cast(agree, tf.float32))
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        (student_x, teacher_x), labels = data
        teacher_logits = self.teacher_logits(teacher_x, student_x)
        targets = self.hard_targets(labels, teacher_logits)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            student_logits = self.student(student_x, training=True)
            total, ce, kd = distillation_losses(student_logits, teacher_logits, targets, self.alpha, self.temperature)
            # Gradients are summed over replicas, so each replica's mean counts 1/replicas of the global mean.
            objective = total / replicas
            if self.student.losses:
                objective += tf.add_n(self.student.losses) / replicas
        variables = self.student.trainable_variables
        grads = tape.gradient(objective, variables)
        if self.gradient_scales:  # only the scaled variables get a multiply in the step's graph
            scales = self.gradient_scales
            grads = [g * scales[v.path] if v.path in scales else g for g, v in zip(grads, variables, strict=True)]
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._update_metrics(total, ce, kd, labels, student_logits, teacher_logits)

    def test_step(self, data):
        (student_x, teacher_x), labels = data
        teacher_logits = self.teacher_logits(teacher_x, student_x)
        targets = self.hard_targets(labels, teacher_logits)
        student_logits = self.student(student_x, training=False)
        total, ce, kd = distillation_losses(student_logits, teacher_logits, targets, self.alpha, self.temperature)
        return self._update_metrics(total, ce, kd, labels, student_logits, teacher_logits)


def save_optimizer_state(optimizer: keras.optimizers.Optimizer, path) -> None:
    """Optimizer variables (iterations, momenta) as a pickle-free .npz, written atomically."""
    import io

    from isp_keras import fsutil

    buf = io.BytesIO()
    np.savez(buf, **{f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
    fsutil.write_bytes_atomic(path, buf.getvalue())


def load_optimizer_state(optimizer: keras.optimizers.Optimizer, variables, path) -> None:
    optimizer.build(variables)
    with np.load(path, allow_pickle=False) as data:
        values = [data[k] for k in sorted(data.files)]
    if len(values) != len(optimizer.variables):
        raise ValueError(
            f"{path}: holds {len(values)} optimizer variables, the optimizer has {len(optimizer.variables)}"
        )
    for var, value in zip(optimizer.variables, values):
        var.assign(value)


def evaluate(
    ds: tf.data.Dataset,
    teacher: keras.Model,
    model: keras.Model | None = None,
    on: str = "student",
    subset: list | None = None,
) -> dict:
    """Accuracy and agreement with the teacher-on-RGB, in percent.

    top1/top5: against the labels over all of the model's outputs (None when no example is labelled; unlabelled
    examples carry a negative label and are left out). top1_subset/top5_subset (with `subset`, the label indices
    the data holds): the same with the prediction restricted to those classes. agreement: the model's top-1 equals
    the teacher's top-1 on clean RGB; agreement_top5: the teacher's top-1 is among the model's top 5.

    `on="student"`: `model` sees the student input (RAW). `on="teacher_rgb"`: the teacher itself on RGB.
    `on="teacher_raw"`: the teacher on the student's (RAW) input.
    """
    model = model if model is not None else teacher
    inverse = None
    if subset is not None:
        inverse = np.full(max(subset) + 1, -1, np.int32)
        inverse[np.asarray(subset)] = np.arange(len(subset), dtype=np.int32)
        inverse = tf.constant(inverse)
        subset_t = tf.constant(np.asarray(subset, np.int32))

    def hits(labels, logits, k, valid):
        k = min(k, logits.shape[-1])
        found = tf.math.in_top_k(tf.maximum(labels, 0), logits, k)
        return tf.reduce_sum(tf.cast(tf.logical_and(found, valid), tf.float32))

    @tf.function(reduce_retracing=True)
    def step(student_x, teacher_x, labels):
        t = teacher(teacher_x, training=False)
        s = t if on == "teacher_rgb" else model(student_x, training=False)
        labels = tf.cast(labels, tf.int32)
        valid = labels >= 0
        teacher_top = tf.argmax(t, -1, output_type=tf.int32)
        counts = [
            hits(labels, s, 1, valid),
            hits(labels, s, 5, valid),
            hits(teacher_top, s, 1, tf.ones_like(valid)),
            hits(teacher_top, s, 5, tf.ones_like(valid)),
            tf.reduce_sum(tf.cast(valid, tf.float32)),
            tf.cast(tf.shape(labels)[0], tf.float32),
        ]
        if inverse is not None:
            inner = tf.gather(inverse, tf.clip_by_value(labels, 0, tf.shape(inverse)[0] - 1))
            restricted = tf.gather(s, subset_t, axis=-1)
            inside = tf.logical_and(valid, inner >= 0)
            counts += [hits(inner, restricted, 1, inside), hits(inner, restricted, 5, inside)]
        return tf.stack(counts)

    totals = np.zeros(8 if inverse is not None else 6)
    for (student_x, teacher_x), labels in ds:
        totals += step(student_x, teacher_x, labels).numpy()
    labelled, n = totals[4], max(totals[5], 1.0)

    def pct(value, of):
        return 100 * value / of if of else None

    out = {
        "top1": pct(totals[0], labelled),
        "top5": pct(totals[1], labelled),
        "agreement": pct(totals[2], n),
        "agreement_top5": pct(totals[3], n),
        "count": int(totals[5]),
        "labelled": int(labelled),
    }
    if inverse is not None:
        out["top1_subset"] = pct(totals[6], labelled)
        out["top5_subset"] = pct(totals[7], labelled)
    return out
