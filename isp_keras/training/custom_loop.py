"""A training loop on `strategy.run` for strategies Keras 3 `fit()` cannot drive (MultiWorkerMirroredStrategy,
keras-team/keras#20585: fit hands a PerReplica value to `strategy.reduce`).

It runs the model's own `train_step` (for the Distiller: the same loss, replica scaling and optimizer update as
under `fit`), so there is no second copy of the loss. Metrics are Keras metrics whose variables are
sync-on-read: reading them outside `strategy.run` sums their state over all replicas of all workers, so the
logs are global. Keras callbacks (checkpoints, NaN guard, TensorBoard, progress bar) run as under `fit`.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _global_logs(model: keras.Model) -> dict:
    # Cross-replica reads of sync-on-read metric variables are all-reductions; every worker reads in this order.
    return {m.name: float(m.result()) for m in model.metrics}


def fit(
    model: keras.Model,
    dataset: tf.data.Dataset,
    strategy: tf.distribute.Strategy,
    *,
    epochs: int,
    steps_per_epoch: int,
    initial_epoch: int = 0,
    callbacks=(),
    verbose="auto",
) -> keras.callbacks.History:
    """Like `model.fit(dataset, epochs, initial_epoch, steps_per_epoch, callbacks)` for a compiled model built
    under `strategy.scope()`. `dataset` yields global batches; it is repeated so epochs are `steps_per_epoch`
    steps and each pass reshuffles."""
    with strategy.scope():
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    iterator = iter(strategy.experimental_distribute_dataset(dataset.repeat()))

    @tf.function
    def train_step(it):
        strategy.run(model.train_step, args=(next(it),))

    history = keras.callbacks.History()
    show = 0 if verbose == 0 else (2 if verbose == 2 else 1)
    callback_list = keras.callbacks.CallbackList(
        list(callbacks) + [history],
        add_progbar=show != 0,
        model=model,
        verbose=show,
        epochs=epochs,
        steps=steps_per_epoch,
    )
    model.stop_training = False
    logs = {}
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            train_step(iterator)
            logs = _global_logs(model)
            callback_list.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return history
