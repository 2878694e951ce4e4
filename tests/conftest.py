import os

# Before TensorFlow is imported anywhere: keep its start-up chatter out of the test log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

SHARED_MEDMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decoded-array cache, so no test reads another's arrays."""
    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path_factory.mktemp("cache")))


def write_png(path: Path, seed: int, size: int = 40, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype="uint8"), mode).save(path)
    return path


@pytest.fixture
def tiny_skin(tmp_path) -> Path:
    """A course root holding a small synthetic Lab2/Skin set (32x32 images)."""
    from datasets import synthetic

    synthetic.write_skin(tmp_path / "course", n_train=24, n_val=12, size=32, seed=1)
    return tmp_path / "course"


@pytest.fixture
def tiny_course(tmp_path) -> Path:
    """A course root with small synthetic Skin, Bone, X-ray (9 organs) and lung-mask sets."""
    from datasets import synthetic

    root = tmp_path / "course"
    synthetic.write_skin(root, n_train=24, n_val=12, size=32, seed=1)
    synthetic.write_bone(root, n_train=24, n_val=12, size=32, seed=1)
    synthetic.write_xray9(root, n_train=36, n_test=18, size=32, seed=1)
    synthetic.write_lungs(root, n_pairs=20, size=32, seed=1)
    return root
