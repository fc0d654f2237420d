"""Cluster execution: workflow/profiles/slurm against a real single-node SLURM, and the local profiles.

The SLURM tests need a cluster that answers here: `bash scripts/slurm/start.sh` (root, Debian:
slurm-wlm, slurmdbd on MariaDB, munge; two fake GPUs) starts one, `.ci/run` does so. Without it
they skip and say why; with RETHINKING_REQUIRE_SLURM=1 (set by .ci/run once start.sh succeeded)
they fail instead, so CI cannot pass by skipping them.

What is real here: sbatch submission of every job, SLURM's partitions, account, time limits and
memory from the profile, `--gpus=1` scheduled on GPUs that SLURM counts and hands out (with
CUDA_VISIBLE_DEVICES set), job states read by the plugin through sacct, and a requeue of a running
training job that then resumes from its checkpoint. What is not: the GPUs are character devices
(/dev/null), so training runs on the CPU (training.device: auto finds no CUDA) while SLURM holds
a GPU for it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, background, clone_project, started, tree_files

PROFILE = "workflow/profiles/slurm"
RESULTS = "results/slurm"
ACCOUNT, GPU_PARTITION, CPU_PARTITION = "rethinking", "gpu", "cpu"  # the profile's, and start.sh's
# the profile's per-rule requests, as sacct shows them: (time limit, memory)
TRAIN_LIMITS = ("12:00:00", "8000M")
CPU_LIMITS = {
    "prepare": ("01:00:00", "4000M"),
    "corrupt": ("01:00:00", "4000M"),
    "theorem": ("01:00:00", "4000M"),
    "aggregate": ("00:30:00", "4000M"),
    "records": ("00:30:00", "4000M"),
    "figures": ("00:30:00", "4000M"),
    "kernels": ("04:00:00", "16000M"),
}
# the AlexNet run, which never fits (lr 1e-6) and so trains all its epochs: long enough to be requeued mid-run
# columns that differ between any two runs (runs.csv: time, memory, device; jobs.csv and jobs_detail.csv: the jobs')
MEASURED = re.compile(
    r"time|seconds|peak_rss|max_rss|images_per_s|^(wall|cpu)_s$|^io_(in|out)_mb$|^mean_load$|^device$"
)
SLOW_RUN = "digits-train100-test50/true-labels/alexnet/crop-wd/seed0"


def _env():
    """This environment without SLURM's job variables: snakemake must submit as from a login node."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}


def sh(cmd, cwd=None, timeout=120, check=True):
    proc = subprocess.run(
        cmd, cwd=cwd, shell=True, capture_output=True, text=True, timeout=timeout, env=_env(), check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"`{cmd}` failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def slurm_missing() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    start = "start one with `bash scripts/slurm/start.sh` (root, Debian)"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed: pip install -e '.[slurm]'"
    if not shutil.which("sbatch"):
        return f"no SLURM client (sbatch) on this machine: {start}"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30, check=False)
    if "UP" not in ping.stdout:
        said = ((ping.stdout + ping.stderr).strip().splitlines() or ["nothing"])[0]
        return f"no SLURM controller answers (`scontrol ping`: {said}): {start}"
    parts = subprocess.run(
        ["sinfo", "-h", "-o", "%R %G %t"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    found = {line.split()[0]: line for line in parts.splitlines()}
    if not {GPU_PARTITION, CPU_PARTITION} <= set(found) or "gpu:" not in found[GPU_PARTITION]:
        return (
            f"this SLURM is not the test cluster (partitions {CPU_PARTITION} and {GPU_PARTITION} with GPUs; "
            f"sinfo: {parts.strip()!r}): {start}"
        )
    return None


@pytest.fixture(scope="module")
def slurm():
    reason = slurm_missing()
    if reason:
        if os.environ.get("RETHINKING_REQUIRE_SLURM") == "1":
            pytest.fail(f"RETHINKING_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)


def sacct(where: str) -> list[dict]:
    """One row per job record (a requeued job has one per try), oldest first."""
    fields = [
        "JobIDRaw",
        "JobName",
        "Comment",
        "Partition",
        "Account",
        "State",
        "AllocTRES",
        "Timelimit",
        "ReqMem",
        "Start",
        "End",
    ]
    out = sh(f"sacct -X -D -P -n --starttime now-1days -o {','.join(fields)} {where}").stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


# --- SLURM hands out its GPUs, and the train command's GPU slots follow CUDA_VISIBLE_DEVICES ---------

SLOT_JOB = """
import os, sys, time
from rethinking.engine.slots import claim
visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
t0 = time.monotonic()
slot = claim(len(visible.split(",")), 1, lock_dir=sys.argv[1], timeout=5)
print(visible, slot.physical, slot.device, slot.slot, round(time.monotonic() - t0, 3), flush=True)
time.sleep(4)
"""


@pytest.mark.slow
def test_slurm_hands_out_gpus_and_the_train_slots_follow_them(slurm, slurm_run, tmp_path):
    """Three one-GPU jobs on two GPUs: two run at once on different GPUs, each claiming the slot of the GPU
    SLURM gave it without waiting; the third waits for a GPU. `--gpus=1` is what the plugin submits. After the
    pipeline's run (slurm_run), whose training jobs would hold the GPUs."""
    (tmp_path / "job.py").write_text(SLOT_JOB)
    locks = tmp_path / "locks"  # one lock folder for all jobs, as on a node's /tmp
    ids = []
    for i in range(3):
        ids.append(
            sh(
                f"sbatch --parsable -p {GPU_PARTITION} -A {ACCOUNT} --gpus=1 --cpus-per-task=1 --mem=500 "
                f"-t 5 -o {tmp_path}/{i}.out --wrap '{sys.executable} {tmp_path}/job.py {locks}'"
            ).stdout.strip()
        )
    deadline = time.monotonic() + 180
    while sh(f"squeue -h -j {','.join(ids)} -o %i", check=False).stdout.strip() and time.monotonic() < deadline:
        time.sleep(1)
    rows = {r["JobIDRaw"]: r for r in sacct(f"-j {','.join(ids)}")}
    assert [rows[i]["State"] for i in ids] == ["COMPLETED"] * 3, [(tmp_path / f"{i}.out").read_text() for i in range(3)]
    for i in ids:
        assert "gres/gpu=1" in rows[i]["AllocTRES"] and rows[i]["Partition"] == GPU_PARTITION
    seen = [(tmp_path / f"{i}.out").read_text().split() for i in range(3)]
    for visible, physical, device, slot, waited in seen:
        assert visible in {"0", "1"} and physical == visible and (device, slot) == ("0", "0")
        assert float(waited) < 1.0  # its own GPU's slot was free: no job waited on another's
    # the two GPUs were in use at once by different jobs; the third job started when one was free again
    first, second, third = (rows[i] for i in sorted(ids, key=lambda i: rows[i]["Start"]))
    assert {seen[ids.index(first["JobIDRaw"])][0], seen[ids.index(second["JobIDRaw"])][0]} == {"0", "1"}
    assert second["Start"] < first["End"]
    assert third["Start"] >= min(first["End"], second["End"])


# --- the pipeline through the slurm profile ----------------------------------------------------------


def params_text(section5: bool) -> str:
    """config/tiny.yaml cut to both kinds of training job (one run, and a pack of two), with training.device
    auto so training jobs ask for a GPU, and one slow run to requeue. Without section5 for the SLURM run:
    kernels (2 CPUs) and theorem would hold the 2-CPU node for a minute; the dry runs check their requests."""
    cfg = yaml.safe_load((REPO / "config/tiny.yaml").read_text())
    cfg["results_dir"] = RESULTS
    if not section5:
        cfg.pop("section5")
    cfg["training"].update(device="auto", pack=2, max_epochs=100, lr={"alexnet": 1.0e-6})
    cfg["grid"] = [
        {"name": "fig1a", "models": ["mlp_1x512"], "corruptions": ["true_labels", "random_labels"]},
        {"name": "table1", "models": ["alexnet"], "corruptions": ["true_labels"], "regularizers": ["crop+wd"]},
    ]
    return yaml.safe_dump(cfg, sort_keys=False)


def copy_project(dst: Path, section5: bool = False) -> Path:
    clone_project(dst)
    (dst / "slurm-test.yaml").write_text(params_text(section5))
    return dst


def job_counts(log: str) -> Counter:
    """Jobs per rule from the job-stats table Snakemake prints first, less the local rules: the target `all`
    and `jobs` (the benchmark table, run where snakemake runs), which are never submitted."""
    table = log.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE)})
    counts.pop("total"), counts.pop("all"), counts.pop("jobs")
    return counts


def rule_of(comment: str) -> str:
    """The plugin's sbatch --comment: rule_<rule> or rule_<rule>_wildcards_<values>."""
    assert comment.startswith("rule_"), comment
    return comment[len("rule_") :].split("_wildcards_")[0]


def requeue_mid_run(proc, root: Path, log: Path, deadline: float) -> str | None:
    """Wait for the slow run's training job to run past its first checkpoint, then requeue it in SLURM
    (as preemption does) and let it start again at once (a requeued job otherwise waits 2 min)."""
    run_dir = root / RESULTS / "runs" / SLOW_RUN
    while proc.poll() is None and time.monotonic() < deadline:
        m = re.search(r"SLURM run ID: (\S+)", log.read_text())
        if m and (run_dir / "checkpoint.pt").exists() and not (run_dir / "summary.json").exists():
            jobs = sh(f"squeue -h --name {m[1]} -o '%i|%k|%T'", check=False).stdout.split()
            running = [
                j.split("|")[0]
                for j in jobs
                if j.split("|")[1].startswith("rule_train_wildcards_") and j.split("|")[2] == "RUNNING"
            ]
            if running:
                sh(f"scontrol requeue {running[0]}")
                for _ in range(100):
                    if sh(f"squeue -h -j {running[0]} -o %T", check=False).stdout.strip() == "PENDING":
                        break
                    time.sleep(0.1)
                sh(f"scontrol update jobid={running[0]} StartTime=now", check=False)
                return running[0]
        time.sleep(0.2)
    return None


class SlurmRun:
    """The cut tiny grid through workflow/profiles/slurm, as shipped, with one training job requeued mid-run;
    beside it, the same params run locally. Started in the background when the session starts (conftest:
    it mostly waits for SLURM, so the other tests run meanwhile); `wait` gives what the tests read."""

    def __init__(self, base: Path):
        self.procs, self.result, self.error = [], None, None
        self.thread = threading.Thread(target=self._run, args=(base,), daemon=True)
        self.thread.start()

    def _run(self, base: Path):
        try:
            self.result = self._pipeline(base)
        except BaseException as exc:  # handed to the test that waits
            self.error = exc

    def _pipeline(self, base: Path) -> dict:
        root, local = copy_project(base / "project"), copy_project(base / "local")
        assert SLOW_RUN in sh(f"{sys.executable} -m rethinking runs --params slurm-test.yaml", root).stdout.split()
        log = root / "snakemake.log"
        t0 = time.monotonic()
        with open(log, "w") as out, open(local / "snakemake.log", "w") as local_out:
            here = subprocess.Popen(
                "snakemake --cores 1 --configfile slurm-test.yaml",
                cwd=local,
                shell=True,
                stdout=local_out,
                stderr=subprocess.STDOUT,
                env=_env(),
                start_new_session=True,
            )
            # job states from sacct (the plugin's default where sacct exists, named to be sure); status checks
            # every few seconds instead of the plugin's 40 s, as the jobs here last seconds
            proc = subprocess.Popen(
                f"snakemake --workflow-profile {PROFILE} --configfile slurm-test.yaml --slurm-status-command sacct "
                "--slurm-init-seconds-before-status-checks 2 --seconds-between-status-checks 2",
                cwd=root,
                shell=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_env(),
                start_new_session=True,
            )
            self.procs = [proc, here]
            try:
                requeued = requeue_mid_run(proc, root, log, deadline=t0 + 900)
                for p in (proc, here):
                    p.wait(timeout=max(1.0, t0 + 900 - time.monotonic()))
            finally:
                self.kill()
        text = log.read_text()
        assert proc.returncode == 0, text[-6000:]
        assert here.returncode == 0, (local / "snakemake.log").read_text()[-6000:]
        run_id = re.search(r"SLURM run ID: (\S+)", text)[1]
        print(f"slurm and local runs: {time.monotonic() - t0:.0f} s, requeued job {requeued}")
        return {
            "root": root,
            "local": local,
            "expected": job_counts(text),
            "records": sacct(f"--name {run_id}"),
            "requeued": requeued,
            "log": text,
        }

    def wait(self) -> dict:
        self.thread.join(timeout=1000)
        if self.error is not None:
            raise self.error
        return self.result

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()


def _start_slurm_run(workdir: Path):
    """The session's starter (conftest.background): nothing where SLURM is not there (the tests skip or fail)."""
    return None if slurm_missing() else SlurmRun(workdir)


background("slurm_run", _start_slurm_run)


@pytest.fixture(scope="module")
def slurm_run(slurm):
    return started("slurm_run")


@pytest.mark.slow
def test_every_job_went_through_sbatch_with_the_profiles_requests(slurm_run):
    records = slurm_run["records"]
    last = {r["JobIDRaw"]: r for r in records}  # a job's final record
    # the jobs Snakemake planned (its job stats) are exactly the cut grid's, and each was one sbatch job
    assert slurm_run["expected"] == Counter(
        prepare=1, corrupt=2, train=1, train_pack_1=1, aggregate=1, records=1, figures=1
    )
    assert Counter(rule_of(r["Comment"]) for r in last.values()) == slurm_run["expected"]
    for r in last.values():
        rule = rule_of(r["Comment"])
        assert r["State"] == "COMPLETED" and r["Account"] == ACCOUNT, r
        if rule == "train" or rule.startswith("train_pack_"):
            # gpu=1 (training.device auto) became sbatch --gpus=1: SLURM allocated one GPU
            assert r["Partition"] == GPU_PARTITION and "gres/gpu=1" in r["AllocTRES"], r
            assert (r["Timelimit"], r["ReqMem"]) == TRAIN_LIMITS, r
        else:
            assert r["Partition"] == CPU_PARTITION and "gres/gpu" not in r["AllocTRES"], r
            assert (r["Timelimit"], r["ReqMem"]) == CPU_LIMITS[rule], r


@pytest.mark.slow
def test_a_requeued_training_job_resumes_from_its_checkpoint(slurm_run):
    job = slurm_run["requeued"]
    assert job is not None, "the slow run finished before it could be requeued"
    states = [r["State"] for r in slurm_run["records"] if r["JobIDRaw"] == job]
    assert states == ["REQUEUED", "COMPLETED"]
    train_log = (slurm_run["root"] / RESULTS / "logs/train" / f"{SLOW_RUN}.log").read_text()
    assert re.search(rf"{re.escape(SLOW_RUN)}: resuming after epoch [1-9]", train_log), train_log[-2000:]


@pytest.mark.slow
def test_slurm_outputs_equal_a_local_run(slurm_run):
    a_root, b_root = slurm_run["root"] / RESULTS, slurm_run["local"] / RESULTS
    kept = ("tables/", "figures/", "runs/", "data/")

    def outputs(root):  # not hidden files: a job killed while writing its checkpoint leaves .checkpoint.pt.*.tmp
        return [f for f in tree_files(root) if f.startswith(kept) and not Path(f).name.startswith(".")]

    files = outputs(a_root)
    assert files == outputs(b_root)
    for f in files:
        a, b = a_root / f, b_root / f
        if f.endswith(".csv"):  # measured times, memory and device names differ between any two runs
            x, y = pd.read_csv(a), pd.read_csv(b)
            drop = [c for c in x.columns if MEASURED.search(c)]
            pd.testing.assert_frame_equal(x.drop(columns=drop), y.drop(columns=drop), obj=f)
        elif f.endswith("summary.json"):
            x, y = ({k: v for k, v in json.loads(p.read_text()).items() if not MEASURED.search(k)} for p in (a, b))
            assert x == y, f
        elif f.startswith("data/"):
            assert a.read_bytes() == b.read_bytes(), f


# --- the profiles themselves (no SLURM needed) -------------------------------------------------------


def dry_run_resources(root: Path, args: str) -> dict[str, str]:
    out = sh(f"snakemake -n {args}", root, timeout=300).stdout
    found = {}
    for job in re.split(r"\n(?=(?:local)?rule )", out):
        m = re.match(r"(?:local)?rule (\w+):", job)
        res = re.search(r"^\s*resources: (.*)$", job, flags=re.MULTILINE)
        if m and res:
            found[m[1]] = res[1]
    return found


def test_slurm_profile_maps_stages_to_partitions_and_gpus(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    root = copy_project(tmp_path / "project", section5=True)
    found = dry_run_resources(root, f"--workflow-profile {PROFILE} --configfile slurm-test.yaml")
    assert {"train", "train_pack_1", *CPU_LIMITS} <= set(found)
    for rule, res in found.items():
        if rule in ("all", "jobs"):  # local rules (the dry run shows them the default resources): never submitted
            continue
        assert f"slurm_account={ACCOUNT}" in res
        if rule.startswith("train"):
            assert f"slurm_partition={GPU_PARTITION}" in res and "gpu=1" in res and "runtime=720" in res, res
        elif rule == "kernels":  # section5.kernels.device auto (the default): a GPU job, with its own limits
            assert f"slurm_partition={GPU_PARTITION}" in res and re.search(r"\bgpu=1\b", res), res
            assert re.search(r"\bruntime=240\b", res) and re.search(r"\bmem_mb=16000\b", res), res
        else:
            assert f"slurm_partition={CPU_PARTITION}" in res and "gpu=" not in res, res
            limit, mem = CPU_LIMITS[rule]
            hours, minutes, _ = limit.split(":")
            assert re.search(rf"\bruntime={int(hours) * 60 + int(minutes)}\b", res), res
            assert re.search(rf"\bmem_mb={mem.rstrip('M')}\b", res), res
    # training on the CPU asks for no GPU
    cpu = (root / "slurm-test.yaml").read_text().replace("device: auto", "device: cpu")
    (root / "cpu.yaml").write_text(cpu)
    found = dry_run_resources(root, f"--workflow-profile {PROFILE} --configfile cpu.yaml")
    assert "gpu=0" in found["train"] and "gpu=0" in found["train_pack_1"]
    # nor does the kernels stage on the CPU
    cfg = yaml.safe_load(cpu)
    cfg["section5"]["kernels"]["device"] = "cpu"
    (root / "cpu-kernels.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = dry_run_resources(root, f"--workflow-profile {PROFILE} --configfile cpu-kernels.yaml")["kernels"]
    assert re.search(r"\bgpu=0\b", res), res


def test_local_gpu_profile_asks_one_gpu_unit_per_training_job(tmp_path):
    """With --resources gpu=N (the profile's default: 1) Snakemake runs at most N training jobs at once;
    each then claims its own GPU slot (tests/test_slots.py); so does the kernels stage. CPU-only stages take no unit."""
    root = copy_project(tmp_path / "project", section5=True)
    found = dry_run_resources(root, "--workflow-profile workflow/profiles/local-gpu --configfile slurm-test.yaml")
    assert "gpu=1" in found["train"] and "gpu=1" in found["train_pack_1"]
    assert "gpu=1" in found["kernels"]  # section5.kernels.device auto: it may use a GPU, so it takes a unit
    assert not any("gpu=" in res for rule, res in found.items() if not rule.startswith("train") and rule != "kernels")
