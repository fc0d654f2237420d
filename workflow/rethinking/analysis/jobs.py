"""Command `jobs`: what the pipeline's jobs cost, per stage -> tables/jobs.csv and jobs_detail.csv.

Snakemake measures every job (each rule's `benchmark:` file, results/benchmarks/<rule>/<wildcards>.tsv,
one row: wall time `s`, `cpu_time`, `max_rss` in MB, io, mean load, sampled by Snakemake over the
job's processes, the shell and python included). DVC has no such directive, so the `train` command
records its own in each run's summary.json: beside `wall_time` (the training loop's), `cpu_time`,
`max_rss_mb` and `process_wall_time` of its process since it started (process_usage; for a pack the
one process's, up to that member's end).

For every job of the grid (rethinking.pipeline.stages.expected_jobs: the benchmark files the stage
declarations give the rules of workflow/rules/*.smk; the caller passes them) this reads its benchmark
file; a training job without one (a DVC run, whose results have no benchmarks/) is read from its runs'
summaries instead; any other job without one is counted as
missing. Snakemake keeps a job's benchmark file until the job runs again, so after an invocation
that ran only some jobs (the others up to date) the table still holds every job's last measurement;
a benchmark file of a job no longer in the grid is not read.

- jobs_detail.csv  one row per job: stage, job (the corruption, run id or pack name; the stage's
                   name for the one-job stages), runs (the runs a training job trained), source
                   (`benchmark` or `summary.json`), wall_s, cpu_s, max_rss_mb (Snakemake's max_rss, or
                   the peak of a pack's members), io_in_mb, io_out_mb, mean_load (benchmarks only)
                   and the file read (missing jobs: source `missing`, the file expected, no numbers)
- jobs.csv         one row per stage of the grid (prepare, corrupt, train (single runs and packs
                   together), aggregate, records, figures, kernels, theorem): jobs measured, missing, runs,
                   wall_s and cpu_s (sums over the jobs: job-seconds, not the pipeline's elapsed time,
                   as jobs run side by side), max_rss_mb (the largest job's), source; and a `total` row
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

DETAIL_COLUMNS = [
    "stage",
    "job",
    "runs",
    "source",
    "wall_s",
    "cpu_s",
    "max_rss_mb",
    "io_in_mb",
    "io_out_mb",
    "mean_load",
    "file",
]
COLUMNS = ["stage", "jobs", "missing", "runs", "wall_s", "cpu_s", "max_rss_mb", "source"]
# a benchmark file's columns (Snakemake 9) -> jobs_detail.csv's
BENCHMARK_COLUMNS = {
    "s": "wall_s",
    "cpu_time": "cpu_s",
    "max_rss": "max_rss_mb",
    "io_in": "io_in_mb",
    "io_out": "io_out_mb",
    "mean_load": "mean_load",
}


def benchmarks_dir(cfg: dict) -> Path:
    return Path(cfg["results_dir"]) / "benchmarks"


@dataclass(frozen=True)
class Job:
    stage: str
    name: str
    file: Path  # its benchmark file, as the rule names it
    runs: tuple[Path, ...] = ()  # the run folders a training job writes


def read_benchmark(path: Path) -> dict | None:
    """A Snakemake benchmark file as jobs_detail.csv's numbers (the mean of its rows when the rule
    repeats the job); None when it is absent or unreadable. Snakemake writes `-` for what it could not
    measure (a job too short to sample): blank here."""
    import pandas as pd

    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, sep="\t", na_values="-")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    if frame.empty or "s" not in frame:
        return None
    out = {}
    for column, name in BENCHMARK_COLUMNS.items():
        values = pd.to_numeric(frame[column], errors="coerce") if column in frame else pd.Series(dtype=float)
        value = values.max() if column == "max_rss" else values.mean()
        out[name] = float(value) if pd.notna(value) else math.nan
    return out


def read_summaries(dirs) -> dict | None:
    """A training job's numbers from its runs' summary.json: process_wall_time (or wall_time), cpu_time and
    max_rss_mb. The members of a pack share one process, which each summary measures up to that member's
    end, so the job's numbers are the largest of its members'. None when a run has no summary (not trained)."""
    found = []
    for d in dirs:
        try:
            found.append(json.loads((Path(d) / "summary.json").read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def largest(*keys):  # over the members, of each one's largest of `keys` (blank if a member has none)
        values = [max((v for k in keys if isinstance(v := s.get(k), (int, float))), default=None) for s in found]
        return math.nan if None in values else round(float(max(values)), 2)

    # the process's wall time, or the training loop's where a summary predates it or the loop's time over
    # resumes is longer than the last process's
    return {
        "wall_s": largest("process_wall_time", "wall_time"),
        "cpu_s": largest("cpu_time"),
        "max_rss_mb": largest("max_rss_mb"),
    }


def job_rows(cfg: dict, jobs: list[Job]):
    """jobs_detail.csv as a DataFrame: one row per expected job (pipeline.stages.expected_jobs)."""
    import pandas as pd

    rows = []
    for job in jobs:
        numbers, source, file = read_benchmark(job.file), "benchmark", job.file
        if numbers is None and job.runs:
            numbers, source, file = read_summaries(job.runs), "summary.json", None
        if numbers is None:
            numbers, source, file = {}, "missing", job.file
        rows.append(
            {
                "stage": job.stage,
                "job": job.name,
                "runs": len(job.runs) if job.runs else None,
                "source": source,
                **numbers,
                "file": None if file is None else str(file),
            }
        )
    frame = pd.DataFrame(rows).reindex(columns=DETAIL_COLUMNS)
    frame["runs"] = frame["runs"].astype("Int64")
    return frame


def stage_table(detail):
    """jobs.csv from jobs_detail.csv: one row per stage present in the grid, in pipeline order (the jobs'), and
    `total`."""
    import pandas as pd

    rows = []

    def row(stage, part):
        found = part[part["source"] != "missing"]
        sources = sorted(set(found["source"]))
        return {
            "stage": stage,
            "jobs": len(found),
            "missing": len(part) - len(found),
            "runs": int(found["runs"].sum()) if found["runs"].notna().any() else None,
            "wall_s": round(found["wall_s"].sum(min_count=1), 2),
            "cpu_s": round(found["cpu_s"].sum(min_count=1), 2),
            "max_rss_mb": found["max_rss_mb"].max(),
            "source": "+".join(sources) or None,
        }

    for stage in dict.fromkeys(detail["stage"]):
        part = detail[detail["stage"] == stage]
        if len(part):
            rows.append(row(stage, part))
    rows.append(row("total", detail))
    frame = pd.DataFrame(rows).reindex(columns=COLUMNS)
    frame["runs"] = frame["runs"].astype("Int64")
    return frame


def jobs(cfg: dict, expected: list[Job]) -> Path:
    """Write tables/jobs.csv and tables/jobs_detail.csv for the `expected` jobs; returns jobs.csv's path."""
    from ..files import write_csv
    from .aggregate import tables_dir

    detail = job_rows(cfg, expected)
    table = stage_table(detail)
    out = tables_dir(cfg)
    write_csv(out / "jobs_detail.csv", detail)
    write_csv(out / "jobs.csv", table)
    missing = detail[detail["source"] == "missing"]
    if len(missing):
        print(
            f"not measured: {len(missing)} of {len(detail)} jobs (stages {', '.join(sorted(set(missing['stage'])))}) "
            "have no benchmark file (not run by Snakemake since benchmarks were added, or run by DVC)"
        )
    return out / "jobs.csv"
