"""benchmarks/gpu_check.sh, the GPU session's check, run on CPU through the same script path.

The device tool runs one command of at most 10 minutes and returns files of at most 16 MiB from $OUT;
the script must finish inside its budget, pass only arguments the CLI accepts, and leave a small
archive (tables, no checkpoints) even when it is killed. Tiny sizes: the digits, one epoch, packs of 2;
the paths steps (packed train, kill and resume, torchrun with 2 gloo processes, decode: device with device
cpu) on the script's tiny JPEG tree. About 45 s on the project's 2 cores (the paths steps ~20 of them).
"""

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import REPO, clone_project

SCRIPT = "benchmarks/gpu_check.sh"
TINY = [
    "--device",
    "cpu",
    "--dataset",
    "digits",
    "--train-size",
    "100",
    "--test-size",
    "50",
    "--epochs",
    "1",
    "--batch-size",
    "25",
    "--train-models",
    "mlp_1x512",
    "--bench-models",
    "mlp_1x512",
    "--bench-size",
    "100",
    "--bench-epochs",
    "1",
    "--packs",
    "2",
    "--pack-models",
    "mlp_1x512",
    "--pack-size",
    "100",
    "--workers",
    "0",
    "--threads",
    "1",
]
RETURNED = 16 * 2**20  # the device tool returns files of up to 16 MiB ...
RETURNED_FILES = 8  # ... at most 8 of them, named in letters, digits, '.', '_' and '-'
CIFAR_ZIP = Path("/work/shared/data/cifar10-jpeg.zip")
CIFAR_ZIP_BYTES = 65_314_233  # its size, where the file itself is not on the machine (CI)
TRIMMED_ZIP_BYTES = 59_653_972  # `gpu_check_params.py trim` of it at 4,500 training images per class
WHEELS_BYTES = 507_094  # jsonschema, jsonschema-specifications, referencing, rpds-py (cp312)


def _env():
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    return env


def _members(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


def _archivable(results: Path) -> list[str]:
    """The files the archive should hold: what exists under the results folder, less checkpoints and data."""
    names = []
    for top in (
        "logs",
        "tables",
        "figures",
        "bench",
        "runs",
        "params.yaml",
        "params-tables.yaml",
        "runs.txt",
        "corruptions.txt",
        "versions.json",
        *(p.relative_to(results).as_posix() for p in sorted(results.glob("tiny/*.yaml"))),
    ):
        p = results / top
        for f in [p] if p.is_file() else p.rglob("*") if p.is_dir() else []:
            if f.is_file() and f.suffix not in (".pt", ".npz", ".lock") and ".tmp" not in f.name:
                names.append(f.relative_to(results).as_posix())
    return sorted(names)


def _our_processes(root: Path) -> list[str]:
    """Processes still running in the clone (a step the script should have ended)."""
    left = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if Path(os.readlink(d / "cwd")).resolve() == root.resolve():
                    left.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                pass
    return left


def test_budget_is_within_the_device_limit():
    out = subprocess.run(["bash", SCRIPT, "--budget"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"^total (\d+)s of TOTAL 480s$", out, re.M).group(1))
    assert total <= 480, out  # 8 minutes, inside the tool's 10 with room for the lead's timeout_s
    limits = [int(v) for v in re.findall(r"limit +(\d+)s", out)]
    assert len(limits) >= 13 and min(limits) >= 1, out


def test_gpu_check_yaml_gives_every_run_a_slot():
    """jobs_per_gpu >= runs: with 1, the runs queue for one GPU slot and the time limit kills the waiting ones."""
    from rethinking.plan import expand_runs, load

    cfg = load(REPO / "benchmarks/gpu-check.yaml")
    assert cfg["training"]["jobs_per_gpu"] >= len(expand_runs(cfg)) == 6


@pytest.mark.slow
def test_gpu_check_on_cpu(tmp_path):
    root = clone_project(tmp_path / "project")
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", SCRIPT, *TINY, "--out", str(out)], cwd=root, env=_env(), capture_output=True, text=True, timeout=240
    )
    elapsed = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert elapsed < 120, f"{elapsed:.0f} s\n{log}"  # about 60 s on the project's 2 cores (under load)
    assert int(re.search(r"gpu_check: (\d+)s of the 480s budget", log).group(1)) <= 480

    results = root / "results-gpu"
    step_logs = {p.name: p.read_text() for p in (results / "logs").glob("*.log")}
    for name, text in [("stdout+stderr", log), *step_logs.items()]:  # every argument it passed was accepted
        assert "usage:" not in text and "error:" not in text and "Traceback" not in text, f"{name}:\n{text}"
    assert {"bench_models.log", "bench_pack2.log", "prepare.log", "corrupt.log", "aggregate.log", "figures.log"} <= set(
        step_logs
    )
    # the paths steps on the tiny tree: packed train, kill and resume, torchrun (2 gloo processes), decode: device
    assert {"tiny.log", "packed_train.log", "resume.log", "ddp.log"} <= set(step_logs), sorted(step_logs)
    assert "resuming after epoch 1" in step_logs["resume.log"]
    assert "2 x cpu" in step_logs["ddp.log"]  # the summary line of a run of 2 processes
    paths = json.loads((results / "bench" / "paths.json").read_text())
    import torch

    assert paths["torch"] == torch.__version__
    assert set(paths["steps"]) == {"packed_train", "resume", "ddp", "decode_device"}
    assert all(v.startswith("ok,") for k, v in paths["steps"].items() if k != "decode_device"), paths
    try:
        import torchcodec  # noqa: F401

        assert paths["steps"]["decode_device"].startswith("ok,"), paths
        assert "decode: device" in step_logs["decode_device.log"] and "device: cpu" in step_logs["decode_device.log"]
    except ImportError:
        assert paths["steps"]["decode_device"] == "skipped: torchcodec missing", paths
    assert re.search(r"gpu_check: torch \S+: every figure below is of this machine's torch", log)
    assert sum(n.startswith("train_") for n in step_logs) == 2

    params = results / "params.yaml"
    import yaml

    assert yaml.safe_load(params.read_text())["training"]["jobs_per_gpu"] >= 2

    # what comes back: a few files, the archive under 16 MiB with the tables and no checkpoint or data
    returned = sorted(p.name for p in out.iterdir())
    assert len(returned) <= RETURNED_FILES and all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in returned), returned
    assert {"gpu-check.tgz", "gpu_check.log", "bench.json", "table1.md"} <= set(returned)
    archive = out / "gpu-check.tgz"
    assert archive.stat().st_size < RETURNED
    names = _members(archive)
    assert {
        "tables/table1.csv",
        "tables/table1.md",
        "tables/runs.csv",
        "bench/models.json",
        "bench/pack2.json",
        "bench/paths.json",
        "versions.json",
        "tiny/folder.yaml",
        "logs/gpu_check.log",
        "params.yaml",
    } <= set(names), names
    assert any(n.startswith("figures/") and n.endswith(".png") for n in names), names
    assert not [n for n in names if n.endswith((".pt", ".npz"))], names
    assert list(results.rglob("*.pt")), "the runs wrote checkpoints: the archive left them out"
    bench = json.loads((out / "bench.json").read_text())
    assert bench["pack2"]["pack"] == 2 and bench["models"]["images_per_s"] > 0
    # every result names the torch it was measured with (the device image's, on the device)
    assert bench["versions"]["torch"] == torch.__version__ and bench["models"]["torch"] == torch.__version__
    assert json.loads((results / "bench" / "pack2.json").read_text())["torch"] == torch.__version__
    assert f"torch {torch.__version__}" in (out / "table1.md").read_text()


@pytest.mark.slow
def test_gpu_check_killed_mid_run_still_returns_an_archive(tmp_path):
    """TERM to the script's process group (what `timeout -s TERM` does) while a bench runs: the EXIT trap
    ends the step and archives what exists."""
    root = clone_project(tmp_path / "project")
    out = tmp_path / "out"
    log = out / "gpu_check.log"
    proc = subprocess.Popen(
        ["bash", SCRIPT, *TINY, "--out", str(out)],
        cwd=root,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    main_log = root / "results-gpu" / "logs" / "gpu_check.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "bench_models: start" not in (
        main_log.read_text() if main_log.exists() else ""
    ):
        time.sleep(0.2)
    time.sleep(1.0)  # inside the bench: torch is loading
    t_kill = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    rc = proc.wait(timeout=30)
    assert time.monotonic() - t_kill < 15
    assert rc == 128 + signal.SIGTERM
    text = log.read_text()
    assert "stopped by SIGTERM" in text and "bench_models: start" in text, text
    assert not _our_processes(root), "a step outlived the script"

    names = _members(out / "gpu-check.tgz")
    assert names == _archivable(root / "results-gpu"), names  # what existed, no more, no less
    assert {"logs/gpu_check.log", "logs/params.log", "logs/bench_models.log", "params.yaml", "runs.txt"} <= set(names)
    assert "stopped by SIGTERM" in _read(out / "gpu-check.tgz", "logs/gpu_check.log")


def _read(archive: Path, name: str) -> str:
    with tarfile.open(archive) as tar:
        return tar.extractfile(name).read().decode()


def test_carry_size_fits_the_device_limit(tmp_path):
    """What a device call carries (tree + the zip + the wheels) stays under 64 MiB; a link or too much fails."""
    root = clone_project(tmp_path / "project")
    (root / ".git" / "info").mkdir(exist_ok=True)
    with open(root / ".git" / "info" / "exclude", "a") as f:
        f.write("/.whl/\n")
    (root / "data").mkdir()
    # sparse: the size is what counts (the trimmed zip the header says to carry)
    os.truncate(_touch(root / "data" / "cifar10-jpeg.zip"), TRIMMED_ZIP_BYTES)
    os.truncate(_touch(root / ".whl" / "wheels.whl"), WHEELS_BYTES)

    def carry(*args):
        return subprocess.run(
            ["bash", SCRIPT, "--carry-size", *args], cwd=root, env=_env(), capture_output=True, text=True, timeout=60
        )

    ok = carry()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    total = float(re.search(r"carry: +([\d.]+) MiB +in all", ok.stdout).group(1))
    assert 57 < total < 62, ok.stdout  # room for the tree to grow
    assert '["data/cifar10-jpeg.zip", ".whl"]' in ok.stdout

    os.truncate(root / "data" / "cifar10-jpeg.zip", 64 * 2**20)
    over = carry()
    assert over.returncode == 3 and "OVER THE LIMIT" in over.stdout, over.stdout

    (root / "data" / "link.zip").symlink_to(root / ".whl" / "wheels.whl")
    link = carry("--root", "data/link.zip")
    assert link.returncode == 3 and "symbolic link" in link.stdout, link.stdout


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def test_trim_keeps_per_class_training_images_and_every_test_image(tmp_path):
    """`gpu_check_params.py trim`: the zip the check carries; on the real JPEG CIFAR-10 (where this machine has
    it) the size the carry test assumes."""
    import zipfile

    src = tmp_path / "tree.zip"
    with zipfile.ZipFile(src, "w") as z:
        for split, n in (("train", 5), ("test", 3)):
            for c in ("cat", "dog"):
                for i in range(n):
                    z.writestr(f"{split}/{c}/{i:04d}.jpg", b"x" * (i + 1))
    out = subprocess.run(
        [sys.executable, "benchmarks/gpu_check_params.py", "trim", str(src), str(tmp_path / "t.zip"), "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    names = sorted(zipfile.ZipFile(tmp_path / "t.zip").namelist())
    assert [n for n in names if n.startswith("train/")] == [
        f"train/{c}/{i:04d}.jpg" for c in ("cat", "dog") for i in (0, 1)
    ]
    assert len([n for n in names if n.startswith("test/")]) == 6
    if CIFAR_ZIP.exists():
        subprocess.run(
            [sys.executable, "benchmarks/gpu_check_params.py", "trim", str(CIFAR_ZIP), str(tmp_path / "c.zip"), "4500"],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        assert (tmp_path / "c.zip").stat().st_size == TRIMMED_ZIP_BYTES
