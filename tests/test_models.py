"""Every builder with every switch; the layer layout the labs prescribe."""

import itertools

import keras
import numpy as np
import pytest

from models import build_model, model_settings, settings_from
from models.blocks import parse_widths
from models.vgg16 import LAST_CONV

SWITCHES = list(itertools.product([False, True], [0.0, 0.1], [0.0, 0.4]))


def config(**overrides):
    return {"input_shape": (32, 32, 1), "base": 4, "n_classes": 2, "loss": "bce",
            "dense_units": "16-8", **overrides}


def build(name, **overrides):
    """Model `name` from the shared test config, given only the settings it takes."""
    return build_model(name, **settings_from(name, config(**overrides)))


def count(model, layer_type):
    return sum(isinstance(layer, layer_type) for layer in model.layers)


CLASSIFIERS = ["alexnet", "lenet", "mlp", "vgg16"]


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("batch_norm,spatial_dropout,dropout", SWITCHES)
def test_builds_with_each_switch(name, batch_norm, spatial_dropout, dropout):
    model = build(name, batch_norm=batch_norm, spatial_dropout=spatial_dropout, dropout=dropout)
    out = model(np.zeros((2, 32, 32, 1), "float32"))
    assert out.shape == (2, 1)
    n_convs = count(model, keras.layers.Conv2D)
    # BN follows every convolution; the MLP has none, so its switch acts on its 3 dense layers.
    expected_bn = (3 if name == "mlp" else n_convs) if batch_norm else 0
    assert count(model, keras.layers.BatchNormalization) == expected_bn
    n_blocks = {"mlp": 0, "lenet": 2, "alexnet": 5, "vgg16": 5}[name]
    assert count(model, keras.layers.SpatialDropout2D) == (n_blocks if spatial_dropout else 0)
    # Dropout after every hidden dense layer (dense_units "16-8": two).
    assert count(model, keras.layers.Dropout) - count(model, keras.layers.SpatialDropout2D) == (
        {"mlp": 3, "lenet": 1, "alexnet": 2, "vgg16": 2}[name] if dropout else 0
    )


def test_conv_widths_follow_the_lab_tables():
    widths = {
        name: [layer.filters for layer in build(name, base=8).layers
               if isinstance(layer, keras.layers.Conv2D)]
        for name in ("lenet", "alexnet", "vgg16")
    }
    assert widths["lenet"] == [8, 16]
    assert widths["alexnet"] == [8, 16, 32, 32, 16]
    assert widths["vgg16"] == [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]


def test_vgg16_shape_and_last_conv_name():
    model = build("vgg16", input_shape=(128, 128, 1), base=2)
    last = model.get_layer(LAST_CONV)
    assert last is [la for la in model.layers if isinstance(la, keras.layers.Conv2D)][-1]
    flatten = next(la for la in model.layers if isinstance(la, keras.layers.Flatten))
    assert tuple(flatten.output.shape[1:]) == (4 * 4 * 16,)  # 128 -> 4x4x8b


def test_mlp_widths():
    model = build("mlp", base=64)
    dense = [la.units for la in model.layers if isinstance(la, keras.layers.Dense)]
    assert dense == [64, 32, 16, 1]


@pytest.mark.parametrize("loss,n_classes,units,activation", [
    ("bce", 2, 1, "sigmoid"), ("hinge", 2, 1, "linear"), ("categorical", 9, 9, "softmax"),
])
def test_head_matches_the_loss(loss, n_classes, units, activation):
    model = build("lenet", loss=loss, n_classes=n_classes)
    head = model.get_layer("output")
    assert head.units == units and head.activation.__name__ == activation


def test_parse_widths():
    assert parse_widths("128-64") == [128, 64]
    assert parse_widths([64, 64]) == [64, 64]
    assert parse_widths(32) == [32]
    with pytest.raises(ValueError, match="write e.g"):
        parse_widths("wide")


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'resnet'; known models: mlp"):
        build_model("resnet", **config())


@pytest.mark.parametrize("batch_norm,dropout", [(False, 0.0), (True, 0.2)])
def test_unet_shape_widths_and_switches(batch_norm, dropout):
    model = build_model("unet", input_shape=(32, 32, 1), base=2, batch_norm=batch_norm,
                        dropout=dropout)
    assert model(np.zeros((1, 32, 32, 1), "float32")).shape == (1, 32, 32, 1)
    convs = [la.filters for la in model.layers if type(la) is keras.layers.Conv2D]
    assert convs == [2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 16, 16, 8, 8, 4, 4, 2, 2, 1]
    ups = [la.filters for la in model.layers if isinstance(la, keras.layers.Conv2DTranspose)]
    assert ups == [16, 8, 4, 2]
    assert count(model, keras.layers.BatchNormalization) == (18 if batch_norm else 0)
    assert count(model, keras.layers.Dropout) == (8 if dropout else 0)  # 4 down, 4 up
    assert model.get_layer("mask").activation.__name__ == "sigmoid"


def test_every_hidden_dense_layer_gets_its_dropout():
    model = build_model("mlp", input_shape=(32, 32, 1), base=4, dropout=0.3)
    kinds = [type(la).__name__ for la in model.layers[2:]]  # after the input and Flatten
    assert kinds == ["Dense", "Activation", "Dropout"] * 3 + ["Dense"]


def test_an_unknown_setting_is_named_with_the_nearest_one():
    with pytest.raises(ValueError, match=r"model 'mlp': unknown setting 'dropuot' \(did you mean "
                                         r"'dropout'\?\); unknown setting 'spatial_dropout'"):
        build_model("mlp", input_shape=(32, 32, 1), base=4, dropuot=0.1, spatial_dropout=0.1)


def test_missing_settings_are_named():
    with pytest.raises(ValueError, match="model 'alexnet': missing required settings base, "
                                         "dense_units .it takes: base, batch_norm, dense_units"):
        build_model("alexnet", input_shape=(32, 32, 1))


def test_model_settings_come_from_the_builders():
    assert model_settings("unet") == {"input_shape", "base", "dropout", "batch_norm"}
    assert model_settings("transfer_head") == {"input_shape", "dense_units", "n_classes", "loss",
                                               "dropout"}
    assert settings_from("unet", config(dropout=0.1)) == {
        "input_shape": (32, 32, 1), "base": 4, "dropout": 0.1}
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        model_settings("resnet")


def test_batch_norm_statistics_catch_up_within_one_small_epoch():
    """Validation uses BN's moving statistics: after one epoch of 50 steps (a lab set of 800
    images in batches of 16) they must match the data, or a BN model scores chance on
    validation for its first epochs and the pruner's first rungs compare noise. Keras's default
    momentum (0.99) leaves them 60% short here."""
    keras.utils.set_random_seed(0)
    model = build("lenet", batch_norm=True, input_shape=(8, 8, 1), base=2, dense_units="4")
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="binary_crossentropy")
    x = np.full((800, 8, 8, 1), 3.0, "float32")  # far from the initial moving mean of 0
    model.fit(x, np.zeros(800), batch_size=16, epochs=1, verbose=0)
    bn = next(la for la in model.layers if isinstance(la, keras.layers.BatchNormalization))
    probe = keras.Model(model.inputs, bn.input)
    batch_mean = np.asarray(probe(x[:16])).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(np.asarray(bn.moving_mean), batch_mean, rtol=0.05, atol=1e-3)
