"""tf.data feeding and augmentation: training only, and one transform for image and mask."""

import keras
import numpy as np
import pytest

from datasets.pipeline import augmenter, make_dataset

STRONG = {"rotation": 0.1, "shift": 0.2, "zoom": 0.3, "flip": "horizontal_and_vertical",
          "brightness": 0.2, "contrast": 0.3}


def images(n=8, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype="uint8")


def test_validation_batches_are_the_scaled_images_untouched():
    x = images()
    y = np.arange(8, dtype="float32")[:, None]
    (bx, by), = make_dataset(x, y, batch_size=8).as_numpy_iterator()
    np.testing.assert_allclose(bx[..., 0], x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(by, y)
    assert bx.dtype == np.float32 and bx.shape == (8, 16, 16, 1)


def test_training_batches_are_shuffled_and_augmented():
    x = images()
    y = np.arange(8, dtype="float32")[:, None]
    train = make_dataset(x, y, batch_size=8, shuffle_seed=1, augment=augmenter(STRONG, seed=1))
    (bx, by), = train.as_numpy_iterator()
    assert sorted(by.ravel()) == list(range(8)) and by.ravel().tolist() != list(range(8))
    order = by.ravel().astype(int)
    assert not np.allclose(bx[..., 0], x[order] / 255.0)  # augmented
    assert bx.min() >= 0 and bx.max() <= 1


def test_image_and_mask_get_the_same_geometric_transform():
    size = 32
    masks = np.zeros((6, size, size), "uint8")
    for i in range(6):  # a different off-centre rectangle in each, so any move shows
        masks[i, 4 + i:14 + i, 6:20 + i] = 1
    geometric_only = {k: v for k, v in STRONG.items() if k not in ("brightness", "contrast")}
    augment = augmenter(geometric_only, seed=3, masks=True)
    ds = make_dataset(masks * 255, masks[..., None].astype("float32"), batch_size=6,
                      augment=augment)
    (bx, by), = ds.as_numpy_iterator()
    assert set(np.unique(by)) <= {0.0, 1.0}  # masks stay binary
    moved = [not np.array_equal(by[i, ..., 0], masks[i]) for i in range(6)]
    assert sum(moved) >= 4
    # The image was the mask itself: after the same transform they still agree.
    agree = (np.round(bx[..., 0]) == by[..., 0]).mean()
    assert agree > 0.98


def test_unknown_flip_is_refused():
    with pytest.raises(ValueError, match="augmentation flip 'diagonal'"):
        augmenter({"flip": "diagonal"}, seed=0)


def test_the_same_seed_gives_the_same_augmented_epochs():
    """`medtune export` replays a trial and gates on its value: its augmentation must repeat."""

    def two_epochs():
        keras.utils.set_random_seed(1)
        train = make_dataset(images(64), np.zeros(64, "float32"), batch_size=4, shuffle_seed=1,
                             augment=augmenter(STRONG, seed=1))
        return [np.concatenate([bx for bx, _ in train.as_numpy_iterator()]) for _ in range(2)]

    first, again = two_epochs(), two_epochs()
    assert not np.allclose(first[0], first[1])  # each epoch draws new transforms
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
