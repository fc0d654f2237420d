import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
# test this checkout's package, in this process and in every command the tests start
sys.path.insert(0, str(REPO / "workflow"))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "workflow"), os.environ.get("PYTHONPATH")]))
# the files a fresh clone has that the pipeline needs (results/ is never copied)
PROJECT_FILES = ["Snakefile", "dvc.yaml", "params.yaml", "config", "workflow", "pyproject.toml"]


def run_cli(*args, cwd, check=False, timeout=600):
    """python -m rethinking ... as a user runs it; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", "rethinking", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"rethinking {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def digits():
    """The bundled digits as arrays (1,437 train / 360 test), as the standalone commands load them."""
    from rethinking.data import load_source
    return load_source("digits")


def copy_project_files(dst: Path) -> Path:
    """Copy the project's files, as a fresh clone would have them, into the folder `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst / name)
    return dst


@pytest.fixture
def project(tmp_path):
    """A copy of the project to run pipelines in."""
    return copy_project_files(tmp_path / "project")


def write_params(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def make_image_folder(root: Path, size=(8, 8), mode="RGB", classes=("cat", "dog", "frog"), n_train=6, n_test=3,
                      fmt="png", seed=0):
    """A small train/<class>/*, test/<class>/* tree of random images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
                Image.fromarray(arr, mode=mode).save(d / f"{i:04d}.{fmt}")
    return root


def tree_files(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []
