"""The synthetic course data sets: layouts, counts, determinism, masks and `ensure`.

Small sets at 32x32 only, and no TensorFlow: these run in a couple of seconds.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import data_settings
from PIL import Image

from datasets import synthetic as syn

SIZE = 32
# A few images of each set: enough for every class and split.
FEW = {
    "skin": {"n_train": 6, "n_val": 4},
    "bone": {"n_train": 6, "n_val": 4},
    "xray9": {"n_train": 18, "n_test": 9},
    "lungs": {"n_pairs": 3},
}


def _files(folder: Path) -> dict[str, bytes]:
    """Every PNG under folder, by path relative to it, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _tree(folder: Path) -> set[str]:
    """Every directory and file under folder (hidden ones included), relative to it."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def _open(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.mode == "L"
        assert image.size == (SIZE, SIZE)
        return np.asarray(image)


# ------------------------------------------------------------------------- layouts and counts


@pytest.mark.parametrize(
    ("writer", "sub", "classes"),
    [
        (syn.write_skin, ("Lab2", "Skin"), ("Mel", "Nevi")),
        (syn.write_bone, ("Lab2", "Bone"), ("AFF", "NFF")),
    ],
)
def test_lab2_layout_and_balanced_counts(tmp_path: Path, writer, sub, classes) -> None:
    out = writer(tmp_path, n_train=7, n_val=4, size=SIZE, seed=0)
    assert out == tmp_path.joinpath(*sub)
    dirs = {"train", "validation"} | {f"{s}/{c}" for s in ("train", "validation") for c in classes}
    assert {p for p in _tree(out) if (out / p).is_dir()} == dirs
    counts = {
        f"{s}/{c}": len(list((out / s / c).iterdir()))
        for s in ("train", "validation")
        for c in classes
    }
    # 7 train images over 2 classes: 4 + 3 (as even as possible); 4 validation: 2 + 2.
    assert counts == {
        f"train/{classes[0]}": 4,
        f"train/{classes[1]}": 3,
        f"validation/{classes[0]}": 2,
        f"validation/{classes[1]}": 2,
    }
    for path in out.rglob("*.png"):
        assert path.name.startswith(path.parent.name + "_")  # class token in the name, too
        _open(path)


def test_xray9_layout_names_and_counts(tmp_path: Path) -> None:
    out = syn.write_xray9(tmp_path, n_train=20, n_test=10, size=SIZE, seed=0)
    assert out == tmp_path / "Lab1" / "X_ray"
    assert {p.name for p in out.iterdir()} == {"train", "test"}
    numbers = []
    for split, n in (("train", 20), ("test", 10)):
        names = [p.name for p in (out / split).iterdir()]
        assert len(names) == n
        assert all(re.fullmatch(r"C[1-9]_\d+\.png", name) for name in names)
        per_class = Counter(name.split("_")[0] for name in names)
        assert set(per_class) == {f"C{k}" for k in range(1, 10)}
        assert max(per_class.values()) - min(per_class.values()) <= 1  # balanced
        assert sum(per_class.values()) == n
        numbers += [int(name[3:-4]) for name in names]
        for name in names:
            _open(out / split / name)
    assert sorted(numbers) == list(range(30))  # unique ids across both splits


def test_lungs_layout_and_masks(tmp_path: Path) -> None:
    out = syn.write_lungs(tmp_path, n_pairs=6, size=SIZE, seed=0)
    assert out == tmp_path / "Lab3" / "X_ray"
    expected = {f"Im{i}.png" for i in range(1, 7)}
    assert {p.name for p in out.iterdir()} == {"Image", "Mask"}
    assert {p.name for p in (out / "Image").iterdir()} == expected
    assert {p.name for p in (out / "Mask").iterdir()} == expected
    for name in sorted(expected):
        image = _open(out / "Image" / name).astype(float)
        mask = _open(out / "Mask" / name)
        assert set(np.unique(mask)) == {0, 255}  # binary
        lung = mask > 0
        assert 0.05 < lung.mean() < 0.5
        # One lobe on each side of the chest.
        assert lung[:, : SIZE // 2].sum() > 0 and lung[:, SIZE // 2 :].sum() > 0
        # Lungs are the dark fields of the chest: darker than the body just around them.
        around = _dilate(lung, 3) & ~lung
        assert image[lung].mean() < image[around].mean() - 10


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    grown = mask.copy()
    for _ in range(steps):
        grown[1:] |= grown[:-1].copy()
        grown[:-1] |= grown[1:].copy()
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
    return grown


@pytest.mark.parametrize("name", sorted(syn.GENERATORS))
def test_images_use_a_sensible_intensity_range(tmp_path: Path, name: str) -> None:
    out = syn.GENERATORS[name](tmp_path, size=SIZE, seed=0, **FEW[name])
    for path in sorted(out.rglob("*.png")):
        if path.parent.name == "Mask":
            continue
        pixels = _open(path)
        assert int(pixels.max()) - int(pixels.min()) > 80  # real contrast, not a flat image
        assert 10 < pixels.mean() < 245  # neither black nor blown out


def test_generators_registry() -> None:
    expected = {
        "skin": syn.write_skin,
        "bone": syn.write_bone,
        "xray9": syn.write_xray9,
        "lungs": syn.write_lungs,
    }
    assert dict(syn.GENERATORS) == expected


def test_size_argument(tmp_path: Path) -> None:
    out = syn.write_skin(tmp_path, n_train=2, n_val=2, size=48, seed=0)
    for path in out.rglob("*.png"):
        with Image.open(path) as image:
            assert image.size == (48, 48)
            assert image.mode == "L"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_train"):
        # a class would be empty
        syn.write_skin(tmp_path / "a", n_train=1, n_val=2, size=SIZE, seed=0)
    with pytest.raises(ValueError, match="n_test"):
        syn.write_xray9(tmp_path / "b", n_train=9, n_test=8, size=SIZE, seed=0)
    with pytest.raises(ValueError, match="seed"):
        syn.write_lungs(tmp_path / "c", n_pairs=1, size=SIZE, seed=-1)
    syn.write_bone(tmp_path / "d", n_train=2, n_val=2, size=SIZE, seed=0)
    with pytest.raises(FileExistsError):  # would mix with the older set's files
        syn.write_bone(tmp_path / "d", n_train=2, n_val=2, size=SIZE, seed=0)


# ------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("name", sorted(syn.GENERATORS))
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, name: str) -> None:
    kwargs = FEW[name]
    first = _files(syn.GENERATORS[name](tmp_path / "a", size=SIZE, seed=5, **kwargs))
    again = _files(syn.GENERATORS[name](tmp_path / "b", size=SIZE, seed=5, **kwargs))
    other = _files(syn.GENERATORS[name](tmp_path / "c", size=SIZE, seed=6, **kwargs))
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[k] != other[k] for k in first)


def test_files_do_not_depend_on_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threaded = _files(syn.write_skin(tmp_path / "threads", n_train=40, n_val=2, size=SIZE, seed=0))

    def in_order(task: Callable[[int], None], n: int) -> None:
        for i in reversed(range(n)):  # another order, one thread
            task(i)

    monkeypatch.setattr(syn, "_parallel", in_order)
    serial = _files(syn.write_skin(tmp_path / "serial", n_train=40, n_val=2, size=SIZE, seed=0))
    assert threaded == serial


def test_images_within_a_set_differ(tmp_path: Path) -> None:
    files = _files(syn.write_bone(tmp_path, n_train=10, n_val=2, size=SIZE, seed=0))
    assert len(set(files.values())) == len(files)


# ---------------------------------------------------------------------------------- ensure

SMALL = {"n_train": 4, "n_val": 2, "size": SIZE, "seed": 0}


def test_ensure_writes_once_into_a_folder_named_by_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = syn.ensure("skin", tmp_path, **SMALL)
    assert out == tmp_path / f"skin-n_train4-n_val2-size32-seed0-v{syn.VERSION}" / "Lab2" / "Skin"
    assert len(list(out.rglob("*.png"))) == 6
    marker = json.loads((out / syn.MARKER).read_text())
    assert marker == {
        "name": "skin",
        "params": {"n_train": 4, "n_val": 2, "size": SIZE, "seed": 0},
        "version": syn.VERSION,
        "n_files": 6,
    }
    assert [p.name for p in tmp_path.iterdir()] == [out.parent.parent.name]  # no temp left
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    @functools.wraps(syn.write_skin)  # same signature, so ensure sees the same settings
    def must_not_run(*args: object, **kwargs: object) -> Path:
        raise AssertionError("ensure rewrote a complete set")

    monkeypatch.setitem(syn.GENERATORS, "skin", must_not_run)
    assert syn.ensure("skin", tmp_path, **SMALL) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes


def test_ensure_with_other_settings_makes_another_set(tmp_path: Path) -> None:
    a = syn.ensure("bone", tmp_path, **SMALL)
    b = syn.ensure("bone", tmp_path, **{**SMALL, "seed": 1})
    c = syn.ensure("bone", tmp_path, **{**SMALL, "size": 40})
    assert len({a, b, c}) == 3
    assert _files(a).keys() == _files(b).keys()
    assert _files(a) != _files(b)
    with Image.open(next(c.rglob("*.png"))) as image:
        assert image.size == (40, 40)


def test_the_study_defaults_set_every_setting_of_every_set() -> None:
    settings = data_settings()["synthetic"]
    assert settings.keys() == syn.GENERATORS.keys()
    for name, values in settings.items():
        assert set(values) == set(syn.setting_names(name))
    folders = {name: syn.set_folder(name, **values) for name, values in settings.items()}
    v = syn.VERSION  # the embedded sets (and so their caches) of before the settings moved
    assert folders == {"skin": f"skin-n_train1000-n_val200-size128-seed0-v{v}",
                       "bone": f"bone-n_train1000-n_val200-size128-seed0-v{v}",
                       "xray9": f"xray9-n_train1800-n_test450-size128-seed0-v{v}",
                       "lungs": f"lungs-n_pairs234-size128-seed0-v{v}"}


def test_ensure_rejects_unknown_names_and_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown synthetic set"):
        syn.ensure("brain", tmp_path)
    with pytest.raises(TypeError):
        syn.ensure("lungs", tmp_path, n_train=3)
    with pytest.raises(TypeError, match="seed"):  # no defaults: a study gives every setting
        syn.ensure("lungs", tmp_path, n_pairs=3, size=SIZE)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_no_set_and_is_redone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = syn.write_lungs

    @functools.wraps(real)  # same signature, so ensure sees the same settings
    def dies_half_way(root: Path, **kwargs: int) -> Path:
        syn.write_lungs(root, **{**kwargs, "n_pairs": 1})
        raise KeyboardInterrupt

    monkeypatch.setitem(syn.GENERATORS, "lungs", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        syn.ensure("lungs", tmp_path, n_pairs=3, size=SIZE, seed=0)
    assert list(tmp_path.iterdir()) == []  # neither the set nor its temp folder

    monkeypatch.setitem(syn.GENERATORS, "lungs", real)
    out = syn.ensure("lungs", tmp_path, n_pairs=3, size=SIZE, seed=0)
    assert len(list((out / "Image").iterdir())) == 3
    assert len(list((out / "Mask").iterdir())) == 3


def _finished_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_left_over_temp_folders_are_not_taken_for_a_set(tmp_path: Path) -> None:
    folder = syn.set_folder("skin", **SMALL)
    host = socket.gethostname()
    # A crashed writer's temp folder (dead pid), and one of a writer still at work (our pid);
    # both look complete inside, marker and all.
    crashed = tmp_path / f".{folder}.tmp-{host}-{_finished_pid()}-deadbeef"
    running = tmp_path / f".{folder}.tmp-{host}-{os.getpid()}-cafecafe"
    for temp in (crashed, running):
        out = syn.write_skin(temp, **SMALL)
        marker = {
            "name": "skin",
            "params": syn.settings("skin", **SMALL),
            "version": syn.VERSION,
            "n_files": 6,
        }
        (out / syn.MARKER).write_text(json.dumps(marker))

    out = syn.ensure("skin", tmp_path, **SMALL)
    assert out == tmp_path / folder / "Lab2" / "Skin"
    assert len(list(out.rglob("*.png"))) == 6
    assert not crashed.exists()  # cleaned up: its writer is gone
    assert running.exists()  # left alone: its writer may still finish


def test_incomplete_set_in_place_is_rewritten(tmp_path: Path) -> None:
    out = syn.ensure("xray9", tmp_path, n_train=9, n_test=9, size=SIZE, seed=0)
    victim = next((out / "train").iterdir())
    victim.unlink()  # e.g. a user tidied up by hand: the marker's file count no longer holds
    again = syn.ensure("xray9", tmp_path, n_train=9, n_test=9, size=SIZE, seed=0)
    assert again == out
    assert victim.exists()
    assert len(list(out.rglob("*.png"))) == 18
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.parent.parent.name]

    (out / syn.MARKER).unlink()  # no marker: not a finished set either
    syn.ensure("xray9", tmp_path, n_train=9, n_test=9, size=SIZE, seed=0)
    assert (out / syn.MARKER).is_file()
