"""The course data sets: folder names and how each layout encodes the class.

These are facts of the course's data layouts (`shared/docs/cm2003-data.md`), not lab settings;
a study file names a data set by its key here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataSet:
    key: str
    folder: str  # folder name in the course data, e.g. Lab2/<folder>/train
    classes: tuple[str, ...]  # Lab2 class sub-folders, in label order
    tokens: tuple[str, ...]  # Lab1 file-name tokens, in label order
    token_is_prefix: bool  # Lab1: the token starts the file name (C1_...) or just occurs in it
    synthetic: str  # generator in datasets.synthetic for the embedded default

    @property
    def n_classes(self) -> int:
        return len(self.classes)


CATALOG: dict[str, DataSet] = {
    "skin": DataSet("skin", "Skin", ("Mel", "Nevi"), ("Mel", "Nev"), False, "skin"),
    "bone": DataSet("bone", "Bone", ("AFF", "NFF"), ("AFF", "NFF"), False, "bone"),
    "xray9": DataSet(
        "xray9",
        "X_ray",
        tuple(f"C{k}" for k in range(1, 10)),
        tuple(f"C{k}" for k in range(1, 10)),
        True,
        "xray9",
    ),
}


@dataclass(frozen=True)
class MaskSet:
    """Image/mask pairs for segmentation: `<folder>/{Image,Mask}/` under Lab3. There is no
    validation folder: how the pairs split is a setting, a study's `[split]`."""

    key: str
    folder: str
    synthetic: str  # generator in datasets.synthetic for the embedded default


MASK_SETS: dict[str, MaskSet] = {"lungs": MaskSet("lungs", "X_ray", "lungs")}


def get(key: str) -> DataSet | MaskSet:
    if key in CATALOG:
        return CATALOG[key]
    if key in MASK_SETS:
        return MASK_SETS[key]
    known = ", ".join([*CATALOG, *MASK_SETS])
    raise ValueError(f"unknown data set {key!r}; known: {known}")
