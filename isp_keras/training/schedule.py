"""The optimizer schedule: Nesterov SGD, linear warmup then cosine decay."""

from __future__ import annotations

import keras


def sgd(steps: int, lr: float, weight_decay: float, warmup_steps: int = 0) -> keras.optimizers.Optimizer:
    """Nesterov SGD with linear warmup then cosine decay to 0; no weight decay on BN and biases."""
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else lr,
        decay_steps=max(steps - warmup_steps, 1),
        warmup_target=lr if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
    opt = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=weight_decay or None)
    if weight_decay:
        opt.exclude_from_weight_decay(var_names=["bn", "bias", "beta", "gamma"])
    return opt
