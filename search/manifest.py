"""What it takes to reproduce a study: seeds, data, code version, packages, the study file."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("medtune", "tensorflow-cpu", "keras", "optuna", "optuna-integration", "mlflow",
            "numpy", "scikit-learn", "matplotlib", "pillow")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


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


def manifest(
    *, settings: dict[str, Any], sampler: dict, pruner: dict, data: dict[str, Any], study_file: str
) -> dict[str, Any]:
    return {
        "settings": settings,  # the seed among them: sampler seed, and seed + n for trial n
        "sampler": {"type": "tpe", **sampler},
        "pruner": pruner,
        "data": data,
        "git": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "study_file": study_file,
    }
