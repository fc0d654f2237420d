"""Spreads over seeds, as every table gives them: the sample standard deviation (sd) and the half-width of the
95% t-interval of the mean (ci95). numpy at import; scipy when an interval is computed."""

from __future__ import annotations

import numpy as np


def spread(values) -> float:
    """Sample standard deviation (NaN for fewer than two values)."""
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def ci95(values) -> float:
    """Half-width of the 95% t-interval of the mean (NaN for one value)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def t_interval(values) -> tuple[float, float]:
    """The 95% t-interval of the mean, as seaborn's `errorbar` callable wants it."""
    v = np.asarray(values, dtype=float)
    half = ci95(v)
    m = float(np.nanmean(v))
    return (m, m) if np.isnan(half) else (m - half, m + half)


def over_seeds(frame, keys: list[str], stats):
    """The cell columns of a per-seed table: `cell_status` (the state every seed ended in, or "mixed"), `seeds`,
    and the mean, sd and ci95 of each of `stats` over the seeds, blank where the states are mixed (the tables'
    rule: never an average across runs that ended differently)."""
    g = frame.groupby(keys, sort=False, dropna=False)
    frame["cell_status"] = g["status"].transform(lambda s: s.iloc[0] if s.nunique() == 1 else "mixed")
    frame["seeds"] = g["seed"].transform("count")
    for v in stats:
        frame[f"{v}_mean"] = g[v].transform("mean")
        frame[f"{v}_sd"] = g[v].transform(spread)
        frame[f"{v}_ci95"] = g[v].transform(ci95)
    frame.loc[frame["cell_status"] == "mixed", [f"{v}_{s}" for v in stats for s in ("mean", "sd", "ci95")]] = np.nan
    return frame
