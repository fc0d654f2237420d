"""What the training engines share (so far: the process's own usage, for the summaries)."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def process_usage() -> dict:
    """This process's CPU time (user + system, seconds), peak resident memory (MB) and wall time (seconds;
    None where /proc is not there) since it started: imports and data loading included, which a run's
    `wall_time` (its training loop, summed over resumes) leaves out."""
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    per_mb = 1024 * 1024 if sys.platform == "darwin" else 1024   # ru_maxrss: bytes on macOS, KB on Linux
    return {"cpu_time": ru.ru_utime + ru.ru_stime, "max_rss_mb": ru.ru_maxrss / per_mb,
            "process_wall_time": _process_age()}


def _process_age() -> float | None:
    """Seconds since this process started, from /proc (Linux): its start in clock ticks after boot."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return None
