"""Ensembles: several trained classifiers averaged into one Keras model.

The ensemble is an ordinary functional model, token ids -> the mean of its members'
probabilities, each member a nested model named ``member_<i>_<architecture>``. It saves as
one ``model.keras``, exports as one SavedModel with one signature and one provenance, and
serves like any classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import tf_keras as keras

from maas.model.bilstm import INPUT_NAME

MEMBER_PREFIX = "member_"


def build_ensemble(members: Sequence[keras.Model], *, name: str = "ensemble") -> keras.Model:
    """One model averaging ``members``' probabilities (they share the input and the classes).

    Raises:
        ValueError: fewer than two members, or members of different inputs or outputs.
    """
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
    shapes = {(tuple(m.input_shape), tuple(m.output_shape)) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members disagree on input or output shapes: {sorted(shapes)}")
    token_ids = keras.Input(shape=members[0].input_shape[1:], dtype="int32", name=INPUT_NAME)
    outputs = []
    for index, member in enumerate(members):
        prefix = f"{MEMBER_PREFIX}{index}_"
        if not member.name.startswith(prefix):  # unique names inside one model
            member._name = f"{prefix}{member.name}"
        outputs.append(member(token_ids))
    probabilities = keras.layers.Average(name="probabilities")(outputs)
    return keras.Model(token_ids, probabilities, name=name)


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The member models of an ensemble; ``[]`` for a single classifier."""
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def is_ensemble(model: keras.Model) -> bool:
    return bool(ensemble_members(model))
