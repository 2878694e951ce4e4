"""Decoded arrays cached on disk, keyed by their source and the settings that made them.

Decoding and resizing is the slow part of a study's start (bone images are large); the arrays it
yields are small. So each (source, size) is decoded once and reused by every trial and study.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

CACHE_VERSION = 1  # bump when decoding changes, so old arrays are not reused


def cache_root() -> Path:
    """`$MEDTUNE_CACHE`, or ~/.cache/medtune: synthetic data sets and decoded arrays live here."""
    return Path(os.environ.get("MEDTUNE_CACHE", "~/.cache/medtune")).expanduser()


def fingerprint(paths: Iterable[Path], root: Path) -> str:
    """Hash of the file list and sizes: names the data set, and survives copying it elsewhere."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.relative_to(root)}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def last_change(paths: Iterable[Path]) -> int:
    """Newest modification time (ns): with the fingerprint, it keys the cache, so a file edited
    in place (same name and size) is decoded again."""
    return max((path.stat().st_mtime_ns for path in paths), default=0)


def cached_arrays(
    key: dict, build: Callable[[], dict[str, np.ndarray]]
) -> tuple[dict[str, np.ndarray], bool]:
    """The arrays for `key`, built and stored on the first call. Returns (arrays, from_cache)."""
    text = json.dumps({**key, "version": CACHE_VERSION}, sort_keys=True, default=str)
    path = cache_root() / "arrays" / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.npz"
    if path.exists():
        with np.load(path) as stored:
            return {name: stored[name] for name in stored.files}, True
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(partial, **arrays)
    os.replace(partial, path)  # atomic: a crash never leaves a half-written cache entry
    path.with_suffix(".json").write_text(text)
    return arrays, False
