"""What it takes to reproduce a study: seeds, data, code version, packages, the study file."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from search.runtime.urls import mask_password

PACKAGES = ("medtune", "tensorflow-cpu", "keras", "optuna", "optuna-integration", "mlflow",
            "numpy", "scikit-learn", "matplotlib", "pillow")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def git_commit(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The checkout's commit and whether it had uncommitted changes (None outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


SERVED_PACKAGES = ("tensorflow-cpu", "keras", "mlflow", "numpy", "pandas", "pillow")


def served_requirements() -> list[str]:
    """What a served model needs, pinned to the versions it was trained with (a package not
    installed, e.g. `tensorflow` instead of `tensorflow-cpu`, is left out)."""
    return [f"{name}=={version}" for name, version in package_versions(SERVED_PACKAGES).items()
            if version]


def manifest(
    *, settings: dict[str, Any], sampler: dict, pruner: dict, data: dict[str, Any], study_file: str
) -> dict[str, Any]:
    """The manifest of a study; any password in its settings or data (storage URLs) masked."""
    return {
        # the seed among them: sampler seed, and seed + n for trial n
        "settings": masked(settings),
        "sampler": {"type": "tpe", **sampler},
        "pruner": pruner,
        "data": masked(data),
        "git": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "study_file": study_file,
    }


def masked(value: Any) -> Any:
    """`value` with the passwords of the URLs in its strings masked, at any depth."""
    if isinstance(value, str):
        return mask_password(value)
    if isinstance(value, dict):
        return {key: masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [masked(item) for item in value]
    return value
