"""Magnitude pruning with tensorflow-model-optimization, fine-tuned, stripped and verified.

What is pruned (``compress.prune.layers``): the embedding table (``embedding``, ~96 % of the
teacher's weights), the input and recurrent kernels of both LSTM directions (``lstm``) and
the output layer's kernel (``dense``). Biases are never pruned (tfmot's rule).

``prune_low_magnitude`` does not accept a ``Bidirectional`` wrapper as a whole, so the model
is cloned layer by layer: :class:`PrunableBidirectional` is a ``Bidirectional`` that names its
four LSTM kernels as prunable. tfmot's wrapper also drops Keras masks (it defines no
``compute_mask``), which would let the LSTM read padding while it fine-tunes:
:class:`MaskKeepingPruneLowMagnitude` passes the wrapped layer's mask on.

Sparsity follows a :class:`PolynomialDecay` schedule from 0 to the target over
``ramp_epochs``, then stays at the target for the remaining (recovery) epochs; the weights
kept are those of the best validation epoch at the target sparsity. After
``strip_pruning`` the weights are copied into a plain copy of the original architecture, so
the pruned model saves, loads and converts like the teacher. An ensemble is pruned member by
member, with the same settings, and averaged again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from maas.batches import shuffled_batches
from maas.config import PRUNABLE_LAYERS
from maas.model.ensemble import build_ensemble, ensemble_members
from maas.progress import epoch_logger


class PrunableBidirectional(keras.layers.Bidirectional, tfmot.sparsity.keras.PrunableLayer):
    """A ``Bidirectional(LSTM)`` whose input and recurrent kernels tfmot may prune."""

    def get_prunable_weights(self) -> list:
        cells = [self.forward_layer.cell, self.backward_layer.cell]
        return [cell.kernel for cell in cells] + [cell.recurrent_kernel for cell in cells]


class MaskKeepingPruneLowMagnitude(pruning_wrapper.PruneLowMagnitude):
    """tfmot's pruning wrapper, passing on the wrapped layer's mask (``mask_zero``)."""

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)


class BestAtTargetSparsity(keras.callbacks.Callback):
    """Keep the weights of the best validation epoch among those at the target sparsity.

    Fine-tuning a model that early stopping already chose overfits within a few epochs: the
    recovery epochs help only until they do. Epochs before the ramp ends do not count, their
    weights being less sparse than asked. Must run after ``UpdatePruningStep``, which masks
    the weights at each epoch's end.
    """

    def __init__(self, first_epoch: int) -> None:
        super().__init__()
        self.first_epoch = first_epoch  # 0-based: the first epoch that ends at the target
        self.best_score = -math.inf
        self.best_weights: list[np.ndarray] | None = None
        self.best_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        score = (logs or {}).get("val_accuracy")
        if epoch >= self.first_epoch and score is not None and score > self.best_score:
            self.best_score, self.best_epoch = score, epoch + 1
            self.best_weights = self.model.get_weights()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def layer_kind(layer: keras.layers.Layer) -> str | None:
    """Which entry of :data:`maas.config.PRUNABLE_LAYERS` a layer is, if any.

    Frozen layers are never pruned (the wide model's IDF table is data, not a weight).
    """
    if not layer.trainable:
        return None
    if isinstance(layer, keras.layers.Embedding):
        return "embedding"
    if isinstance(layer, keras.layers.LSTM | keras.layers.Bidirectional):
        return "lstm"
    if isinstance(layer, keras.layers.Dense):
        return "dense"
    return None


def _check_arguments(target_sparsity: float, layers: Sequence[str]) -> None:
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target_sparsity}")
    unknown = sorted(set(layers) - set(PRUNABLE_LAYERS))
    if unknown or not layers:
        raise ValueError(f"layers to prune: expected names from {PRUNABLE_LAYERS}, got {layers}")


def prunable_clone(
    model: keras.Model, *, schedule: tfmot.sparsity.keras.PruningSchedule, layers: Sequence[str]
) -> keras.Model:
    """A copy of ``model`` (same weights) with the chosen layers wrapped for pruning."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        kind = layer_kind(layer)
        if kind not in layers:
            return layer.__class__.from_config(layer.get_config())
        # tfmot knows Embedding, Dense and LSTM cells; a Bidirectional needs our subclass.
        bidirectional = isinstance(layer, keras.layers.Bidirectional)
        cls = PrunableBidirectional if bidirectional else layer.__class__
        return MaskKeepingPruneLowMagnitude(
            cls.from_config(layer.get_config()), pruning_schedule=schedule
        )

    pruned = keras.models.clone_model(model, clone_function=clone)
    for source, target in zip(model.layers, pruned.layers, strict=True):
        if isinstance(target, pruning_wrapper.PruneLowMagnitude):
            target = target.layer
        target.set_weights(source.get_weights())
    return pruned


def prune(model: keras.Model, **settings) -> tuple[keras.Model, dict[str, list[float]]]:
    """Prune a classifier (:func:`prune_one`), or each member of an ensemble in turn.

    An ensemble's history is its members' histories, keys prefixed ``member_<i>_``.
    """
    members = ensemble_members(model)
    if not members:
        return prune_one(model, **settings)
    pruned, history = [], {}
    for index, member in enumerate(members):
        one, own = prune_one(member, **settings)
        pruned.append(one)
        history.update({f"member_{index}_{key}": values for key, values in own.items()})
    return build_ensemble(pruned, name=model.name), history


def prune_one(
    model: keras.Model,
    *,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    target_sparsity: float,
    layers: Sequence[str],
    epochs: int,
    ramp_epochs: int,
    learning_rate: float,
    frequency: int,
    batch_size: int,
    seed: int,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Prune ``model`` to ``target_sparsity`` while fine-tuning; return the stripped model.

    Raises:
        ValueError: a sparsity outside [0, 1), unknown layer names, or a bad epoch budget.
    """
    _check_arguments(target_sparsity, layers)
    if not 1 <= ramp_epochs <= epochs:
        raise ValueError(f"need 1 <= ramp_epochs <= epochs, got {ramp_epochs} and {epochs}")
    keras.utils.set_random_seed(seed)
    steps_per_epoch = math.ceil(len(train[0]) / batch_size)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=target_sparsity,
        begin_step=0,
        end_step=max(steps_per_epoch * ramp_epochs - 1, 1),
        frequency=frequency,
    )
    wrapped = prunable_clone(model, schedule=schedule, layers=layers)
    keeper = BestAtTargetSparsity(first_epoch=ramp_epochs - 1)
    wrapped.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = wrapped.fit(
        shuffled_batches(*train, batch_size=batch_size, seed=seed),
        validation_data=validation,
        epochs=epochs,
        callbacks=[
            tfmot.sparsity.keras.UpdatePruningStep(),
            keeper,
            epoch_logger("prune", epochs),
        ],
        verbose=0,
    ).history
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    plain = keras.models.clone_model(model)  # the original classes: no custom objects to load
    plain.set_weights(stripped.get_weights())
    history = {k: [float(v) for v in values] for k, values in history.items()}
    history["kept_epoch"] = [float(keeper.best_epoch or epochs)]
    return plain, history


def prunable_weight_names(model: keras.Model, layers: Sequence[str]) -> list[str]:
    """Names of the weights that pruning ``layers`` targets in ``model`` (kernels, tables)."""
    names = []
    for layer in _all_layers(model):
        if layer_kind(layer) not in layers:
            continue
        for weight in layer.weights:
            short = weight.name.split("/")[-1].split(":")[0]
            if short in ("embeddings", "kernel", "recurrent_kernel"):
                names.append(weight.name)
    return names


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of a model, those of an ensemble's members included."""
    members = ensemble_members(model)
    return [layer for member in members for layer in member.layers] if members else model.layers


def weight_sparsity(model: keras.Model) -> dict[str, float]:
    """Share of exact zeros in every weight tensor of ``model``, by weight name."""
    return {w.name: float(np.mean(w.numpy() == 0.0)) for w in model.weights}


def overall_sparsity(model: keras.Model) -> float:
    """Share of exact zeros among all of a model's weights."""
    zeros = sum(int(np.sum(w.numpy() == 0.0)) for w in model.weights)
    total = sum(int(np.prod(w.shape)) for w in model.weights)
    return zeros / total if total else 0.0
