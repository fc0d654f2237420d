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

# the fuzz tests (test_faults) draw the same examples every run, so a CI result is reproducible; a fresh
# draw hunts for new bugs: HYPOTHESIS_PROFILE=explore python -m pytest tests/test_faults.py
try:
    from hypothesis import settings as _hypothesis

    _hypothesis.register_profile("repeatable", derandomize=True, database=None)
    _hypothesis.register_profile("explore", derandomize=False)
    _hypothesis.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
except ImportError:  # hypothesis is in the [test] extra
    pass


# ---------------------------------------------------------------------------- pipelines run once per session
#
# The expensive end-to-end runs (config/tiny.yaml through Snakemake and through DVC, the SLURM profile)
# run once per session, each in a clone of the checkout, and start in the background as soon as the
# session knows a selected test needs them (pytest_collection_modifyitems), so they overlap the unit
# tests and each other: many tests then read one run's outputs. A test module registers the starter of
# a run of its own with `background(name, starter)`; the fixture of the same name waits for it.

BACKGROUND_STARTERS: dict = {}  # fixture name -> starter(workdir) -> object with .wait()
_STARTED: dict = {}


# the stages whose jobs Snakemake runs for config/tiny.yaml, in pipeline order (jobs.csv's rows, then `total`)
JOB_STAGES = ["prepare", "corrupt", "train", "aggregate", "records", "figures", "kernels", "theorem"]


def background(name: str, starter) -> None:
    """Register `starter(workdir)`: called once at the session's start when a selected test uses the fixture
    `name`; returns an object whose .wait() gives the run's result (a Pipeline, or a Thread-like one)."""
    BACKGROUND_STARTERS[name] = starter


class Pipeline:
    """Shell commands run one after the other in a clone of the checkout, in the background."""

    def __init__(self, root: Path, commands: list[str], timeout: float = 900):
        self.root, self.timeout = root, timeout
        self.log = root.parent / f"{root.name}.log"
        script = " && ".join(f"echo '$ {c}' && {c}" for c in commands)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                script, cwd=root, shell=True, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait(self) -> Path:
        try:
            code = self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.root.name}: still running after {self.timeout} s:\n{self.log.read_text()[-4000:]}")
        if code != 0:
            pytest.fail(f"{self.root.name} failed ({code}):\n{self.log.read_text()[-6000:]}")
        return self.root

    def kill(self) -> None:
        if self.proc.poll() is None:
            import signal

            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _tiny_snakemake(workdir: Path) -> Pipeline:
    root = clone_project(workdir / "snakemake")
    return Pipeline(root, ["snakemake --cores 2 --configfile config/tiny.yaml"])


def _tiny_dvc(workdir: Path) -> Pipeline:
    root = clone_project(workdir / "dvc")
    return Pipeline(root, ["python -m rethinking dvc --params config/tiny.yaml", "dvc repro"])


background("tiny_snakemake", _tiny_snakemake)
background("tiny_dvc", _tiny_dvc)


def pytest_collection_modifyitems(config, items):
    needed = {name for item in items for name in getattr(item, "fixturenames", ()) if name in BACKGROUND_STARTERS}
    if not needed:
        return
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="rethinking-session-"))
    config._rethinking_workdir = workdir
    for name in sorted(needed, key=lambda n: n != "slurm_run"):  # the longest-waiting one first
        _STARTED[name] = BACKGROUND_STARTERS[name](workdir / name)


def pytest_sessionfinish(session, exitstatus):
    for run in _STARTED.values():
        kill = getattr(run, "kill", None)
        if kill is not None:
            kill()
    workdir = getattr(session.config, "_rethinking_workdir", None)
    if workdir is not None and exitstatus == 0:
        shutil.rmtree(workdir, ignore_errors=True)


def started(name: str):
    """The result of a background run (waiting for it); started now if the session did not (a test run alone)."""
    if name not in _STARTED:
        import tempfile

        _STARTED[name] = BACKGROUND_STARTERS[name](Path(tempfile.mkdtemp(prefix="rethinking-")) / name)
    return _STARTED[name].wait()


@pytest.fixture(scope="session")
def tiny_snakemake() -> Path:
    """A clone where `snakemake --cores 2 --configfile config/tiny.yaml` ran to the end (read, never write)."""
    return started("tiny_snakemake")


@pytest.fixture(scope="session")
def tiny_dvc() -> Path:
    """A clone where `python -m rethinking dvc --params config/tiny.yaml` and `dvc repro` ran (read only)."""
    return started("tiny_dvc")


def copy_of(root: Path, dst: Path) -> Path:
    """A copy of a finished pipeline's clone (its results, .snakemake/ and .dvc/ too, times kept), to change."""
    shutil.copytree(root, dst, symlinks=True)
    return dst


def run_cli(*args, cwd, check=False, timeout=600):
    """python -m rethinking ... as a user runs it, in a process of its own; returns the CompletedProcess.
    For what is about processes (locks, kills, torchrun, imports); `call_cli` runs the same in this process."""
    proc = subprocess.run(
        [sys.executable, "-m", "rethinking", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"rethinking {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def torchrun_train(params, run_id: str, *, cwd, timeout: float = 300, processes: int = 2):
    """`torchrun --standalone --nproc_per_node=N -m rethinking train` of one streamed run, as its rule starts it;
    returns the CompletedProcess."""
    command = [
        "torchrun",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "rethinking",
        "train",
        "--params",
        str(params),
        "--run-id",
        run_id,
    ]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def call_cli(*args, cwd, check=False):
    """`python -m rethinking ...` in this process (rethinking.cli.main, from `cwd`): the same exit status,
    stdout and stderr as run_cli, without a second of process start and imports per call."""
    import contextlib
    import io

    from rethinking.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        os.chdir(here)
    proc = subprocess.CompletedProcess(["rethinking", *map(str, args)], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"rethinking {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def tiny_params(user_model: bool = False) -> dict:
    """config/tiny.yaml as parsed YAML, to edit and write elsewhere; without its group of a user's model
    (whose file is found relative to config/) unless `user_model`."""
    import yaml

    raw = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    if not user_model:
        raw["grid"] = [g for g in raw["grid"] if not any(":" in m for m in g["models"])]
    return raw


def copy_tiny(dst: Path, text: str | None = None) -> Path:
    """config/tiny.yaml (or `text`) written to dst/tiny.yaml with the model file it names (models/), as a
    params file of its own folder; returns its path."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "config" / "models", dst / "models", dirs_exist_ok=True)
    path = dst / "tiny.yaml"
    path.write_text((REPO / "config" / "tiny.yaml").read_text() if text is None else text)
    return path


@pytest.fixture(scope="module")
def digits():
    """The bundled digits as arrays (1,437 train / 360 test), as the standalone commands load them."""
    from rethinking.data.sources import load_source

    return load_source("digits")


def clone_project(dst: Path) -> Path:
    """A git repository at `dst` holding what a clone of this checkout holds, committed.

    Every file `git ls-files` lists (.gitignore, .dvc/ and .dvcignore included) as it is in the working
    tree, plus untracked files git does not ignore: the commit the developer is about to make, as a
    `git clone` of it would have it. Ignored files (results/, caches, build output) are not there.
    """
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    dst.mkdir(parents=True, exist_ok=True)
    for name in filter(None, listed):
        src = REPO / name
        if not src.is_file():  # deleted in the working tree, not yet committed
            continue
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / name)
    git = [
        "git",
        "-c",
        "user.name=rethinking tests",
        "-c",
        "user.email=tests@localhost",
        "-c",
        "init.defaultBranch=main",
    ]
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["commit", "-q", "--no-verify", "-m", "what a clone of the checkout holds"],
    ):
        subprocess.run(git + args, cwd=dst, check=True, capture_output=True)
    return dst


@pytest.fixture
def project(tmp_path):
    """A clone-like git repository of the project to run pipelines in (see clone_project)."""
    return clone_project(tmp_path / "project")


@pytest.fixture
def digits_cfg(tmp_path):
    """params.yaml (the bundled digits) with its base artifact prepared in a temporary results folder."""
    from rethinking import plan as rc
    from rethinking.data.sources import prepare

    cfg = rc.load(REPO / "params.yaml")
    cfg["results_dir"] = str(tmp_path / "results")
    prepare(cfg)
    return cfg


def write_params(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def make_image_folder(
    root: Path, size=(8, 8), mode="RGB", classes=("cat", "dog", "frog"), n_train=6, n_test=3, fmt="png", seed=0
):
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


class Killed(Exception):
    """Stands for a kill: raised right after a run's checkpoint (train_until_killed)."""


def train_until_killed(cfg, run, epoch, monkeypatch):
    """Train `run` in the in-memory engine and stop it as a kill would, right after its checkpoint of
    `epoch`: what is left is the run folder a killed job leaves."""
    from rethinking.engine import loop as tr

    real = tr.save_checkpoint

    def kill_after(out, fingerprint, model, optimizer, progress, *args, **kw):
        real(out, fingerprint, model, optimizer, progress, *args, **kw)
        if progress.epoch == epoch:
            raise Killed()

    monkeypatch.setattr(tr, "save_checkpoint", kill_after)
    try:
        with pytest.raises(Killed):
            tr.train(cfg, run, log=lambda *_: None)
    finally:
        monkeypatch.setattr(tr, "save_checkpoint", real)


# ---------------------------------------------------------------------------- the per-example record


def reference_record(logits_by_epoch, y) -> dict:
    """The record's scores computed directly, in float64 numpy, from the training set's logits after every
    epoch (a list of n x K arrays) and the assigned labels: what examples.npz must hold."""
    y = np.asarray(y)
    z = np.stack([np.asarray(a, dtype=np.float64) for a in logits_by_epoch])  # E x n x K
    e, n, _ = z.shape
    rows = np.arange(n)
    log_p = z - z.max(2, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(2, keepdims=True))
    p = np.exp(log_p[:, rows, y])  # E x n
    mine = z[:, rows, y]
    others = z.copy()
    others[:, rows, y] = -np.inf
    right = z.argmax(2) == y  # E x n
    learned = np.full(n, -1)
    for i in range(n):
        wrong = np.flatnonzero(~right[:, i])
        last_wrong = wrong[-1] + 1 if len(wrong) else 0  # epochs are 1-based: learned from last_wrong + 1
        learned[i] = last_wrong + 1 if last_wrong < e else -1
    return {
        "learned_epoch": learned,
        "forgetting": (right[:-1] & ~right[1:]).sum(0),
        "confidence": p.mean(0),
        "variability": p.std(0),
        "aum": (mine - others.max(2)).mean(0),
        "final_correct": right[-1],
        "final_loss": -log_p[-1, rows, y],
        "correct": right.T,
    }


def check_record(folder, *, rtol=1e-5) -> dict:
    """A run folder's examples.npz agrees with itself and with its epochs.csv: the per-epoch correctness bits
    give the epochs' train_acc and the memorization split, the learned epoch, the forgetting events and the
    final correctness. Returns (meta, arrays)."""
    import json

    import pandas as pd

    from rethinking.engine.examples import correct_matrix, read_record

    meta, a = read_record(folder)
    epochs = pd.read_csv(Path(folder) / "epochs.csv")
    summary = json.loads((Path(folder) / "summary.json").read_text())
    assert meta["epochs"] == summary["epochs"] == len(epochs) and meta["run"] == summary["run"]
    assert len(a["index"]) == summary["n_train_eval"] and meta["n_train"] == summary["n_train"]
    right = correct_matrix(a["correct_bits"], meta["epochs"])  # n x E
    np.testing.assert_allclose(right.mean(0), epochs["train_acc"], rtol=rtol, atol=1e-12)
    noisy = a["label"] != a["label_true"]
    if noisy.any():
        np.testing.assert_allclose(100 * right[noisy].mean(0), epochs["noisy_memorized"], rtol=rtol)
    np.testing.assert_array_equal(right[:, -1], a["final_correct"])
    forgetting = (right[:, :-1] & ~right[:, 1:]).sum(1)
    np.testing.assert_array_equal(forgetting, a["forgetting"])
    wrong_after = [np.flatnonzero(~r) for r in right]
    learned = [(w[-1] + 2 if len(w) else 1) if r[-1] else -1 for r, w in zip(right, wrong_after)]
    np.testing.assert_array_equal(learned, a["learned_epoch"])
    assert ((a["confidence"] >= 0) & (a["confidence"] <= 1) & (a["variability"] >= 0)).all()
    return meta, a


@pytest.fixture(autouse=True)
def _close_figures():
    """Figures a test draws without saving them (the tests that read a figure's axes) are closed after it."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
