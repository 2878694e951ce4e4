"""Finding the images and their labels in the course's folder layouts (and MedMNIST files).

- Lab1: `<Set>/{train,test}/` flat files, class from a token in the file name.
- Lab2: `<Set>/{train,validation}/<class>/` one sub-folder per class.
- MedMNIST: one `.npz` with `{train,val,test}_{images,labels}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.catalog import DataSet, MaskSet
from datasets.errors import DataError
from datasets.images import is_image

VALIDATION_NAMES = ("validation", "val", "test")  # Lab1 used its test folder for validation
MEDMNIST_SPLITS = {"train": "train", "val": "val", "test": "test"}


@dataclass
class FileSplit:
    paths: list[Path]
    labels: np.ndarray


def locate(dataset: DataSet, data_dir: Path) -> tuple[str, Path]:
    """Where `dataset` lives under a user-given folder, and in which layout.

    Accepts the course root (holding Lab1/ and Lab2/), a Lab folder, the data set's own folder,
    or a MedMNIST `.npz` file.
    """
    if data_dir.suffix == ".npz":
        if not data_dir.is_file():
            raise DataError(f"MedMNIST file {data_dir} does not exist; check the path.")
        return "medmnist", data_dir
    if not data_dir.is_dir():
        raise DataError(
            f"data folder {data_dir} does not exist; pass the course data folder "
            f"(the one holding Lab1/ or Lab2/), its {dataset.folder}/ folder, or a MedMNIST .npz."
        )
    folder = dataset.folder
    candidates = [
        data_dir,
        data_dir / folder,
        data_dir / "Lab2" / folder,
        data_dir / "Lab1" / "Lab2" / folder,  # older years nested Lab2 inside Lab1
        data_dir / "Lab1" / folder,
    ]
    for candidate in candidates:
        layout = _layout_of(candidate)
        if layout:
            return layout, candidate
    looked = ", ".join(str(c.relative_to(data_dir)) or "." for c in candidates)
    raise DataError(
        f"no {folder} data found under {data_dir}: looked for a train/ folder in {looked}. "
        f"Expected Lab2/{folder}/train/<class>/ or Lab1/{folder}/train/ with images."
    )


def _layout_of(folder: Path) -> str | None:
    train = folder / "train"
    if not train.is_dir():
        return None
    entries = [e for e in train.iterdir() if not e.name.startswith(".")]
    if any(e.is_dir() for e in entries):
        return "lab2"
    if any(is_image(e) for e in entries):
        return "lab1"
    raise DataError(f"{train} is empty: it holds no class folders and no images.")


def validation_folder(root: Path) -> Path:
    for name in VALIDATION_NAMES:
        if (root / name).is_dir():
            return root / name
    raise DataError(
        f"{root} has a train/ folder but no validation split: add one of "
        f"{', '.join(n + '/' for n in VALIDATION_NAMES)} beside it."
    )


def lab2_classes(dataset: DataSet, root: Path) -> tuple[str, ...]:
    """The class folders of a Lab2 set: the course's names (`Mel`, `Nevi`, ...), or, in a data
    set's own folder with other names but as many classes (a knee set's `Normal`, `OA`), its
    own folders in sorted order, so any binary set in this layout trains a binary task."""
    train = root / "train"
    found = sorted(d.name for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))
    if {c.lower() for c in dataset.classes} <= {f.lower() for f in found}:
        return dataset.classes
    if len(found) == dataset.n_classes:
        return tuple(found)
    raise DataError(
        f"{train} has no folder for class "
        f"{', '.join(c for c in dataset.classes if c.lower() not in map(str.lower, found))} "
        f"(found: {', '.join(found) or 'none'}); expected one sub-folder per class: "
        f"{', '.join(dataset.classes)} (or {dataset.n_classes} folders of your own classes)."
    )


def lab2_split(classes: Sequence[str], folder: Path) -> FileSplit:
    """Class sub-folders, matched case-insensitively to the class names."""
    sub = {d.name.lower(): d for d in folder.iterdir() if d.is_dir()}
    missing = [c for c in classes if c.lower() not in sub]
    if missing:
        found = ", ".join(sorted(d.name for d in sub.values())) or "none"
        raise DataError(
            f"{folder} has no folder for class {', '.join(missing)} (found: {found}); "
            f"expected one sub-folder per class: {', '.join(classes)}."
        )
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in sub[name.lower()].iterdir() if is_image(p))
        paths += files
        labels += [label] * len(files)
    labels = np.asarray(labels, dtype="int64")
    require_classes(str(folder), labels, classes, "empty class folder")
    return FileSplit(paths, labels)


def lab1_split(dataset: DataSet, folder: Path) -> FileSplit:
    """Flat files; the class is the one token the file name holds (or starts with)."""
    paths, labels = [], []
    for path in sorted(p for p in folder.iterdir() if is_image(p)):
        if dataset.token_is_prefix:
            hits = [i for i, t in enumerate(dataset.tokens) if path.name.startswith(t + "_")]
        else:
            hits = [i for i, t in enumerate(dataset.tokens) if t in path.name]
        if len(hits) != 1:
            raise DataError(
                f"cannot tell the class of {path}: its name must contain exactly one of "
                f"{', '.join(dataset.tokens)}. Rename the file or move it out of {folder}."
            )
        paths.append(path)
        labels.append(hits[0])
    if not paths:
        raise DataError(f"{folder} holds no images.")
    labels = np.asarray(labels, dtype="int64")
    require_classes(str(folder), labels, dataset.tokens)
    return FileSplit(paths, labels)


def require_classes(where: str, labels: np.ndarray, names: Sequence[str], why: str = "") -> None:
    """Every class has images in `where` (a split): one class alone trains a model that always
    says that class, and scores it perfect; a validation split without a class misjudges."""
    counts = np.bincount(labels, minlength=len(names))
    missing = [repr(name) for name, n in zip(names, counts, strict=False) if n == 0]
    if not missing:
        return
    found = [f"{name!r} ({n} image{'s' if n != 1 else ''})"
             for name, n in zip(names, counts, strict=False) if n]
    holds = (f"holds only class {found[0]}" if len(found) == 1
             else f"holds classes {', '.join(found)}" if found else "holds no images")
    need = ("a classifier needs at least two classes" if len(found) < 2
            else f"each split needs images of all {len(names)} classes")
    raise DataError(f"{where} {holds}; no image of class {', '.join(missing)}"
                    f"{f' ({why})' if why else ''} — {need}")


def file_splits(dataset: DataSet, layout: str, root: Path
                ) -> tuple[dict[str, FileSplit], tuple[str, ...]]:
    """Each split's files and labels, and the class names. A `test/` folder beside `train/`
    and `validation/` is a test split, kept aside (Lab1's `test/` is its validation split)."""
    if layout == "lab2":
        classes = lab2_classes(dataset, root)

        def read(folder: Path) -> FileSplit:
            return lab2_split(classes, folder)
    else:
        classes = dataset.classes

        def read(folder: Path) -> FileSplit:
            return lab1_split(dataset, folder)
    validation = validation_folder(root)
    splits = {"train": read(root / "train"), "val": read(validation)}
    if validation.name != "test" and (root / "test").is_dir():
        splits["test"] = read(root / "test")
    return splits, classes


def medmnist_splits(dataset: DataSet, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Images (N, H, W[, C]) uint8 and labels (N,) of each split in a MedMNIST file."""
    try:
        archive = np.load(path)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read MedMNIST file {path}: {error}") from error
    with archive:
        needed = [f"{s}_{k}" for s in MEDMNIST_SPLITS for k in ("images", "labels")]
        missing = [k for k in needed if k not in archive.files]
        if missing:
            raise DataError(
                f"{path} is not a MedMNIST file: missing {', '.join(missing)} "
                f"(found {', '.join(archive.files)})."
            )
        splits = {
            name: (archive[f"{key}_images"], archive[f"{key}_labels"].reshape(-1).astype("int64"))
            for name, key in MEDMNIST_SPLITS.items()
        }
    n_found = int(max(labels.max() for _, labels in splits.values())) + 1
    if n_found > dataset.n_classes:
        raise DataError(
            f"{path} has {n_found} classes but the task's data set '{dataset.key}' has "
            f"{dataset.n_classes}; pick a task with {n_found} classes or another file."
        )
    # Labels 0..k-1, k the largest label + 1 (at least two): each split must hold them all.
    names = [str(label) for label in range(max(n_found, 2))]
    for name, (_, labels) in splits.items():
        require_classes(f"{path} split '{name}'", labels, names)
    return splits


def locate_pairs(mask_set: MaskSet, data_dir: Path) -> Path:
    """The folder holding `Image/` and `Mask/` for `mask_set` under a user-given folder."""
    if not data_dir.is_dir():
        raise DataError(
            f"data folder {data_dir} does not exist; pass the course data folder (the one "
            f"holding Lab3/) or the {mask_set.folder}/ folder with Image/ and Mask/ in it."
        )
    folder = mask_set.folder
    candidates = [data_dir, data_dir / folder, data_dir / "Lab3" / folder,
                  data_dir / "Lab1" / "Lab3" / folder]
    for candidate in candidates:
        if (candidate / "Image").is_dir() or (candidate / "Mask").is_dir():
            return candidate
    raise DataError(
        f"no {folder} image/mask pairs under {data_dir}: expected Lab3/{folder}/Image/ and "
        f"Lab3/{folder}/Mask/ (or {folder}/Image and {folder}/Mask)."
    )


def mask_pairs(root: Path) -> tuple[list[Path], list[Path]]:
    """(images, masks) matched by file name: `Im1.jpg` with `Im1.jpg` or `Im1_Mask.jpg`."""
    for sub in ("Image", "Mask"):
        if not (root / sub).is_dir():
            raise DataError(f"{root} has no {sub}/ folder; image/mask pairs need both.")
    images = {p.stem: p for p in sorted((root / "Image").iterdir()) if is_image(p)}
    if not images:
        raise DataError(f"{root / 'Image'} holds no images.")
    masks = {}
    for mask in sorted(p for p in (root / "Mask").iterdir() if is_image(p)):
        stem = mask.stem.removesuffix("_Mask").removesuffix("_mask")
        if stem not in images:
            raise DataError(
                f"mask {mask} has no image: expected {root / 'Image' / stem}.* beside it. "
                "Add the image or remove the mask."
            )
        masks[stem] = mask
    unmasked = sorted(set(images) - set(masks))
    if unmasked:
        raise DataError(
            f"{len(unmasked)} image(s) in {root / 'Image'} have no mask, e.g. "
            f"{images[unmasked[0]].name}: add Mask/{unmasked[0]}.png or remove the image."
        )
    stems = sorted(images)
    return [images[s] for s in stems], [masks[s] for s in stems]
