"""Loaders on tiny folders of each course layout, MedMNIST files, the cache, and bad input."""

import numpy as np
import pytest
from conftest import SHARED_MEDMNIST, data_settings, write_png
from PIL import Image

from datasets import loader
from datasets.catalog import CATALOG
from datasets.errors import DataError
from search.spec.study_files import load_spec, studies_dir


def load(data, data_dir, image_size, **settings):
    """`loader.load` with the default study settings, or `settings` in their place."""
    return loader.load(data, data_dir, image_size, **{**data_settings(), **settings})


def lab2_folder(root, classes=("Mel", "Nevi"), per_class=(3, 2),
                split_names=("train", "validation")):
    for split in split_names:
        for label, name in enumerate(classes):
            for i in range(per_class[label]):
                write_png(root / split / name / f"{name}_{i}.png", seed=label * 100 + i)
    return root


def test_lab2_layout_labels_from_subfolders(tmp_path):
    root = lab2_folder(tmp_path / "Lab2" / "Skin")
    data = load("skin", tmp_path, image_size=16)  # the course root: finds Lab2/Skin
    assert data.layout == "lab2"
    assert data.source == str(root.resolve())
    assert data.x_train.shape == (5, 16, 16) and data.x_train.dtype == np.uint8
    assert data.y_train.tolist() == [0, 0, 0, 1, 1]
    assert data.class_names == ["Mel", "Nevi"]
    assert data.x_val.shape == (5, 16, 16)


def test_lab1_flat_layout_labels_from_file_names(tmp_path):
    root = tmp_path / "Lab1" / "Bone"
    for split in ("train", "test"):
        write_png(root / split / "AFF_001.png", 1)
        write_png(root / split / "img_NFF_002.jpg", 2, mode="RGB")
        write_png(root / split / "AFF_003.png", 3)
        (root / split / "notes.txt").write_text("not an image: ignored")
    data = load("bone", tmp_path, image_size=8)
    assert data.layout == "lab1"
    assert data.y_train.tolist() == [0, 0, 1]  # sorted names: AFF_001, AFF_003, img_NFF_002
    assert data.x_val.shape == (3, 8, 8)


def test_lab1_nine_organ_prefixes(tmp_path):
    root = tmp_path / "X_ray"
    for split in ("train", "test"):
        for k in range(1, 10):
            write_png(root / split / f"C{k}_{k * 7}.png", k, size=8)
    data = load("xray9", root, image_size=8)  # the data set's own folder works too
    assert data.y_train.tolist() == list(range(9))
    assert data.n_classes == 9


def test_older_nested_layout_is_found(tmp_path):
    lab2_folder(tmp_path / "Lab1" / "Lab2" / "Skin")
    assert load("skin", tmp_path, image_size=8).layout == "lab2"


def test_images_are_gray_resized_and_scaled_once(tmp_path):
    root = tmp_path / "Skin"
    for split in ("train", "validation"):
        write_png(root / split / "Mel" / "a.png", 5, size=64, mode="RGB")
        write_png(root / split / "Nevi" / "b.png", 6, size=20)
    data = load("skin", root, image_size=32)
    assert data.x_train.shape == (2, 32, 32)
    assert not data.from_cache
    again = load("skin", root, image_size=32)
    assert again.from_cache
    np.testing.assert_array_equal(again.x_train, data.x_train)
    other_size = load("skin", root, image_size=16)
    assert not other_size.from_cache and other_size.x_train.shape == (2, 16, 16)


def test_cache_notices_changed_files(tmp_path):
    root = lab2_folder(tmp_path / "Skin")
    load("skin", root, image_size=8)
    write_png(root / "train" / "Mel" / "new.png", 99)
    data = load("skin", root, image_size=8)
    assert not data.from_cache and len(data.y_train) == 6


def tiny_npz(path, n_classes=2, channels=False):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 4), ("test", 4)):
        shape = (n, 28, 28, 3) if channels else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype="uint8")
        arrays[f"{split}_labels"] = (np.arange(n) % n_classes).reshape(n, 1)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("channels", [False, True])
def test_medmnist_npz(tmp_path, channels):
    data = load("skin", tiny_npz(tmp_path / "derma.npz", channels=channels), image_size=32)
    assert data.layout == "medmnist"
    assert data.x_train.shape == (6, 32, 32) and data.x_val.shape == (4, 32, 32)
    assert data.y_train.tolist() == [0, 1, 0, 1, 0, 1]
    assert data.extra["x_test"].shape == (4, 32, 32)


def test_medmnist_with_more_classes_than_the_task(tmp_path):
    with pytest.raises(DataError, match=r"has 6 classes but the task's data set 'skin' has 2"):
        load("skin", tiny_npz(tmp_path / "derma7.npz", n_classes=7), image_size=8)


def test_npz_missing_keys(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match="not a MedMNIST file: missing train_images"):
        load("skin", tmp_path / "x.npz", image_size=8)


@pytest.mark.parametrize("name", ["pneumoniamnist", "breastmnist"])
def test_real_medmnist_subsets(name):
    path = SHARED_MEDMNIST / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"{path} is not here (shared data is optional)")
    data = load("skin", path, image_size=28)
    expected = {"pneumoniamnist": (2428, 270, 468), "breastmnist": (546, 78, 156)}[name]
    assert (len(data.y_train), len(data.y_val), len(data.extra["y_test"])) == expected
    assert set(np.unique(data.y_train)) == {0, 1}
    assert data.x_train.shape[1:] == (28, 28) and data.x_train.std() > 10


# --- bad input: each error names the problem and the fix --------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist; pass the course data folder"):
        load("skin", tmp_path / "nope", image_size=8)


def test_folder_without_the_data_set(tmp_path):
    (tmp_path / "Lab2" / "Bone" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no Skin data found .* Lab2/Skin/train/<class>/"):
        load("skin", tmp_path, image_size=8)


def test_empty_train_folder(tmp_path):
    (tmp_path / "Skin" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="train is empty"):
        load("skin", tmp_path, image_size=8)


def test_no_recognizable_class_folder(tmp_path):
    lab2_folder(tmp_path / "Skin", classes=("benign", "malignant", "other"), per_class=(2, 2, 2))
    with pytest.raises(DataError, match="no folder for class Mel, Nevi .found: benign, malignant, "
                                        "other.*or 2 folders of your own classes"):
        load("skin", tmp_path, image_size=8)


def test_a_binary_set_with_its_own_class_names_and_a_test_split(tmp_path):
    """A data set's own folder (the knee set: Normal, OA) trains a binary task; its test/
    split is loaded and kept aside."""
    root = lab2_folder(tmp_path / "knee", classes=("OA", "Normal"),
                       split_names=("train", "validation", "test"))
    data = load("bone", root, image_size=8)
    assert data.class_names == ["Normal", "OA"]  # sorted: the label order is stable
    assert data.y_train.tolist() == [0, 0, 1, 1, 1]
    assert data.extra["x_test"].shape == (5, 8, 8) and data.extra["y_test"].tolist() == [
        0, 0, 1, 1, 1]
    assert len(data.y_val) == 5


def test_lab1_test_folder_is_the_validation_split_not_a_test_split(tmp_path):
    for split in ("train", "test"):
        for i, name in enumerate(("Mel", "Nev")):
            write_png(tmp_path / "Skin" / split / f"{name}_{i}.png", seed=i)
            write_png(tmp_path / "Skin" / split / f"{name}_{i + 5}.png", seed=i + 5)
    data = load("skin", tmp_path, image_size=8)
    assert data.layout == "lab1" and len(data.y_val) == 4 and "x_test" not in data.extra


def test_missing_validation_split(tmp_path):
    lab2_folder(tmp_path / "Skin", split_names=("train",))
    with pytest.raises(DataError, match="no validation split"):
        load("skin", tmp_path, image_size=8)


def test_unreadable_image_is_named(tmp_path):
    root = lab2_folder(tmp_path / "Skin")
    bad = root / "train" / "Nevi" / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        load("skin", root, image_size=8)


def test_flat_file_without_class_token(tmp_path):
    root = tmp_path / "Lab1" / "Skin"
    for split in ("train", "test"):
        write_png(root / split / "Mel_1.png", 1)
        write_png(root / split / "lesion_2.png", 2)
    with pytest.raises(DataError, match="cannot tell the class of .*lesion_2.png"):
        load("skin", tmp_path, image_size=8)


def test_unknown_data_set():
    with pytest.raises(ValueError, match="unknown data set 'brain'; known: " + ", ".join(CATALOG)):
        load("brain", None, image_size=8)


# --- image/mask pairs (Lab 3) -------------------------------------------------------------


def pairs_folder(root, n=5, mask_suffix=""):
    for i in range(n):
        write_png(root / "Image" / f"Im{i}.png", i)
        mask = np.zeros((40, 40), "uint8")
        mask[5:20 + i, 8:30] = 1  # any value > 0 is the object
        path = root / "Mask" / f"Im{i}{mask_suffix}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(path)
    return root


def test_pairs_are_matched_binarized_and_split_80_20(tmp_path):
    pairs_folder(tmp_path / "Lab3" / "X_ray", n=10)
    data = load("lungs", tmp_path, image_size=20)
    assert data.layout == "pairs"
    assert data.x_train.shape == (8, 20, 20) and data.x_val.shape == (2, 20, 20)
    assert data.y_train.shape == (8, 20, 20) and set(np.unique(data.y_train)) == {0, 1}
    again = load("lungs", tmp_path, image_size=20)
    assert again.from_cache
    np.testing.assert_array_equal(again.y_val, data.y_val)  # the same split every time


def test_a_study_files_split_sets_the_pairs_validation_share(tmp_path):
    pairs_folder(tmp_path / "Lab3" / "X_ray", n=10)
    task = tmp_path / "halves.toml"
    task.write_text((studies_dir() / "unet_xray.toml").read_text()
                    + "\n[split]\nvalidation_fraction = 0.5\n")
    spec = load_spec(str(task))
    halves = loader.load("lungs", tmp_path, 8, split=spec.split, synthetic=spec.synthetic)
    assert halves.x_train.shape[0] == 5 and halves.x_val.shape[0] == 5
    usual = load("lungs", tmp_path, image_size=8)
    assert usual.x_val.shape[0] == 2 and not usual.from_cache  # another split, another entry
    reseeded = load("lungs", tmp_path, image_size=8,
                    split={"validation_fraction": 0.2, "seed": 1})
    assert not reseeded.from_cache
    assert not np.array_equal(reseeded.y_val, usual.y_val)  # other pairs for validation


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_a_split_without_both_sides_is_refused(tmp_path, fraction):
    pairs_folder(tmp_path / "X_ray", n=5)
    with pytest.raises(ValueError, match=r"\[split\] validation_fraction must be between 0 and 1"):
        load("lungs", tmp_path, image_size=8, split={"validation_fraction": fraction, "seed": 0})


def test_the_embedded_set_is_drawn_with_the_studys_synthetic_settings():
    tiny = {**data_settings()["synthetic"],
            "skin": {"n_train": 4, "n_val": 2, "size": 16, "seed": 0}}
    data = load("skin", None, image_size=8, synthetic=tiny)
    assert data.x_train.shape == (4, 8, 8) and data.x_val.shape == (2, 8, 8)
    assert "skin-n_train4-n_val2-size16-seed0-" in data.source
    other = load("skin", None, image_size=8,
                 synthetic={**tiny, "skin": {**tiny["skin"], "seed": 1}})
    assert other.source != data.source and not other.from_cache


def test_ct_style_mask_names(tmp_path):
    pairs_folder(tmp_path / "X_ray", n=5, mask_suffix="_Mask")
    assert load("lungs", tmp_path / "X_ray", image_size=8).x_train.shape[0] == 4


def test_mask_without_image(tmp_path):
    root = pairs_folder(tmp_path / "X_ray", n=3)
    write_png(root / "Mask" / "Im9.png", 9)
    with pytest.raises(DataError, match="mask .*Im9.png has no image"):
        load("lungs", root, image_size=8)


def test_image_without_mask(tmp_path):
    root = pairs_folder(tmp_path / "X_ray", n=3)
    write_png(root / "Image" / "Im7.png", 7)
    with pytest.raises(DataError, match="1 image.s. in .* have no mask, e.g. Im7.png"):
        load("lungs", root, image_size=8)


def test_no_pairs_folder(tmp_path):
    with pytest.raises(DataError, match="no X_ray image/mask pairs"):
        load("lungs", tmp_path, image_size=8)


# --- one class is no classification: every split holds every class ---------------------


def test_lab1_folder_of_one_class_is_refused(tmp_path):
    root = tmp_path / "Lab1" / "Skin"
    for split in ("train", "test"):
        for i in range(12):
            write_png(root / split / f"Mel_{i}.png", i, size=8)
    with pytest.raises(DataError) as error:
        load("skin", tmp_path, image_size=8)
    assert str(error.value) == (
        f"{(root / 'train').resolve()} holds only class 'Mel' (12 images); no image of class "
        "'Nev' — a classifier needs at least two classes")


def test_lab1_validation_without_a_class_is_refused(tmp_path):
    root = tmp_path / "X_ray"
    for k in range(1, 10):
        write_png(root / "train" / f"C{k}_{k}.png", k, size=8)
        if k not in (2, 7):
            write_png(root / "test" / f"C{k}_{k + 10}.png", k, size=8)
    with pytest.raises(DataError, match=r"test holds classes 'C1' \(1 image\), 'C3' .*; no image "
                                        r"of class 'C2', 'C7' — each split needs images of all 9"):
        load("xray9", root, image_size=8)


def test_lab2_empty_class_folder_is_refused(tmp_path):
    root = lab2_folder(tmp_path / "Lab2" / "Skin", per_class=(3, 0))
    (root / "train" / "Nevi").mkdir(parents=True)
    with pytest.raises(DataError) as error:
        load("skin", tmp_path, image_size=8)
    assert str(error.value) == (
        f"{(root / 'train').resolve()} holds only class 'Mel' (3 images); no image of class "
        "'Nevi' (empty class folder) — a classifier needs at least two classes")


def test_lab2_validation_without_a_class_is_refused(tmp_path):
    root = lab2_folder(tmp_path / "Skin")
    for image in (root / "validation" / "Nevi").iterdir():
        image.unlink()
    with pytest.raises(DataError, match="validation holds only class 'Mel' .3 images.; no image "
                                        "of class 'Nevi'"):
        load("skin", tmp_path, image_size=8)


@pytest.mark.parametrize(("labels", "expected"), [
    ({"train": 0}, "split 'train' holds only class '0' (6 images); no image of class '1' — a "
                   "classifier needs at least two classes"),
    ({"val": 1}, "split 'val' holds only class '1' (4 images); no image of class '0'"),
])
def test_medmnist_split_of_one_class_is_refused(tmp_path, labels, expected):
    path = tiny_npz(tmp_path / "derma.npz")
    arrays = dict(np.load(path))
    for split, label in labels.items():
        arrays[f"{split}_labels"][:] = label
    np.savez(path, **arrays)
    with pytest.raises(DataError) as error:
        load("skin", path, image_size=8)
    assert expected in str(error.value) and str(path) in str(error.value)
