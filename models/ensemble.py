"""An ensemble of trained models as one Keras model: the mean of their outputs (probabilities,
hinge margins or mask maps, so the members must share a loss), with the members' input and
output. Saved and loaded as any model (`.keras`); Grad-CAM averages the members' maps."""

from __future__ import annotations

from collections.abc import Sequence

import keras

ENSEMBLE = "medtune_ensemble"  # the model's name: how Grad-CAM knows one
MEMBER = "member_{}"  # each member's name: loaded models are all "functional", names must differ


def build_ensemble(members: Sequence[keras.Model]) -> keras.Model:
    """One model whose output is the mean of `members`' outputs (at least two models with the
    same input shape). The members are renamed `member_<k>` in place."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two models, got {len(members)}")
    shapes = {tuple(m.input_shape[1:]) for m in members}
    if len(shapes) > 1:
        raise ValueError(f"the members' input shapes differ: {sorted(shapes)}")
    for k, member in enumerate(members):
        member.name = MEMBER.format(k)
    first = members[0].inputs[0]
    inputs = keras.Input(shape=first.shape[1:], name=first.name or "image")
    outputs = keras.layers.Average(name="mean", dtype="float32")(
        [member(inputs) for member in members])
    return keras.Model(inputs, outputs, name=ENSEMBLE)


def members_of(model: keras.Model) -> list[keras.Model]:
    """The members of an ensemble built here; [] for any other model."""
    if model.name != ENSEMBLE:
        return []
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]
