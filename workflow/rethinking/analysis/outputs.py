"""The registry of tables and figures: one entry per output, holding its files, the function that makes it, the
tables it reads, its condition and its caption in the Snakemake report.

    @table("seeds.csv", caption="Seeds per model.")            # results/tables/seeds.csv, stage `aggregate`
    def seeds(runs):
        return runs.groupby("model")["seed"].nunique().reset_index()

    @figure("seeds", inputs=("seeds.csv",), caption="...")     # results/figures/seeds.png and .pdf, stage `figures`
    def seeds_figure(frame):
        ...
        return fig

A stage's command (`aggregate`, `figures`, `kernels`, `theorem`) writes its entries in the order they were
registered (produce); its Snakemake rule and its DVC stage take their outputs, and the figures stage its inputs,
from the same entries (rethinking.pipeline.stages), so an entry is all a new output takes.

- A table's function returns one value per file: a DataFrame (CSV), a dict or list (JSON), a str (text); a
  tuple of them for several files. A figure's returns a matplotlib figure (saved as PNG and PDF).
- Its positional parameters take its `inputs`, tables (file names under tables/) in that order: the value
  made in the same command, else the file read (CSV as a DataFrame, JSON as a dict). `optional(file, when)`
  is an input it can do without: None where `when(cfg)` is false or the file is not there. Its other
  parameters are filled by name from what the stage gives (aggregate: cfg, runs, meta; records: cfg, runs,
  meta, records; figures: cfg;
  kernels: cfg, data, meta, device; theorem: cfg, data).
- `when(cfg)`: the output exists only for configs where it holds (is_streamed, has_section5).
- `caption`: reStructuredText for `snakemake --report` (the entry's first file; no caption: not in the report).
- `metrics`: a JSON file that DVC shows as metrics (`dvc metrics show`) rather than as an output.

No pandas, torch or seaborn at import: the rules and the DVC generator import the modules holding the entries.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError, ConfigError

CATEGORIES = {
    "aggregate": "Tables",
    "figures": "Figures",
    "records": "Which labels are wrong",
    "kernels": "Section 5",
    "theorem": "Section 5",
}


def has_section5(cfg: dict) -> bool:
    """The params ask for Section 5 (the kernels and theorem stages)."""
    return bool(cfg.get("section5"))


@dataclass(frozen=True)
class optional:
    """An input an entry can do without (see the module's docstring)."""

    file: str
    when: Callable[[dict], bool] | None = None

    def wanted(self, cfg: dict) -> bool:
        return self.when is None or bool(self.when(cfg))


def _file(spec) -> str:
    return spec.file if isinstance(spec, optional) else spec


@dataclass(frozen=True)
class Output:
    kind: str  # "table" or "figure"
    name: str  # a table's first file; a figure's file stem
    stage: str  # the command that writes it
    files: tuple[str, ...]  # under tables/ (a table) or figures/ (a figure's PNG and PDF)
    make: Callable
    inputs: tuple = ()  # table files, or optional(file, when)
    caption: str | None = None
    category: str | None = None
    when: Callable[[dict], bool] | None = None
    metrics: bool = False

    def exists_for(self, cfg: dict) -> bool:
        return self.when is None or bool(self.when(cfg))

    def paths(self, cfg: dict) -> list[Path]:
        root = Path(cfg["results_dir"]) / ("tables" if self.kind == "table" else "figures")
        return [root / f for f in self.files]


TABLES: dict[str, Output] = {}  # by file name: every file of every table entry
FIGURES: dict[str, Output] = {}  # by name


def _source(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _register(entry: Output) -> None:
    """Add an entry; one that claims a file of another function's entry is an error (re-registering the same
    function, as a reloaded module does, replaces its entry)."""
    book = TABLES if entry.kind == "table" else FIGURES
    keys = entry.files if entry.kind == "table" else (entry.name,)
    for key in keys:
        old = book.get(key)
        if old is not None and _source(old.make) != _source(entry.make):
            raise ConfigError(
                f"{entry.kind} {key!r}: registered already by {_source(old.make)}; "
                f"{_source(entry.make)} cannot register it too"
            )
    for key in [k for k, e in book.items() if _source(e.make) == _source(entry.make) and k not in keys]:
        del book[key]
    for key in keys:  # in place: a reloaded module keeps its entries' order
        book[key] = entry


def unregister(kind: str, name: str) -> None:
    """Remove an entry (a table by any of its files, a figure by its name)."""
    book = TABLES if kind == "table" else FIGURES
    entry = book.get(name)
    if entry is not None:
        for key in [k for k, e in book.items() if e is entry]:
            del book[key]


def table(
    *files: str,
    stage: str = "aggregate",
    inputs=(),
    caption: str | None = None,
    category: str | None = None,
    when=None,
    metrics: bool = False,
):
    """Register the decorated function as the maker of `files` under tables/ (see the module's docstring)."""
    if not files:
        raise ConfigError("table(): name at least one file")

    def add(fn):
        _register(
            Output(
                "table",
                files[0],
                stage,
                tuple(files),
                fn,
                tuple(inputs),
                caption,
                category or CATEGORIES.get(stage),
                when,
                metrics,
            )
        )
        return fn

    return add


def figure(
    name: str, *, stage: str = "figures", inputs=(), caption: str | None = None, category: str | None = None, when=None
):
    """Register the decorated function as the maker of figures/<name>.png and .pdf (see the module's docstring)."""

    def add(fn):
        _register(
            Output(
                "figure",
                name,
                stage,
                (f"{name}.png", f"{name}.pdf"),
                fn,
                tuple(inputs),
                caption,
                category or CATEGORIES.get(stage),
                when,
            )
        )
        return fn

    return add


def entries(stage: str | None = None, cfg: dict | None = None, kind: str | None = None) -> list[Output]:
    """The registered entries (tables first, each once, in registration order), of one stage and kind, and
    those that exist for `cfg` when it is given."""
    found = list(dict.fromkeys(TABLES.values())) + list(FIGURES.values())
    return [
        e
        for e in found
        if (stage is None or e.stage == stage)
        and (kind is None or e.kind == kind)
        and (cfg is None or e.exists_for(cfg))
    ]


def inputs_of(stage: str, cfg: dict) -> list[str]:
    """The tables a stage's entries read from other stages (their files, once each), for the config."""
    own = {f for e in entries(stage, cfg, "table") for f in e.files}
    wanted = [_file(i) for e in entries(stage, cfg) for i in e.inputs if not isinstance(i, optional) or i.wanted(cfg)]
    return [f for f in dict.fromkeys(wanted) if f not in own]


def check_inputs() -> None:
    """Every entry's inputs are files of registered tables, written before it reads them: by another stage, or
    by an earlier entry of its own (a misspelt input: an error naming the entry)."""
    for e in entries():
        for i in e.inputs:
            writer = TABLES.get(_file(i))
            if writer is None:
                raise ConfigError(
                    f"{e.kind} {e.name!r} ({_source(e.make)}): its input {_file(i)!r} is no "
                    f"registered table (registered: {', '.join(TABLES)})"
                )


# ----------------------------------------------------------------------------------------- writing a stage's entries


def produce(stage: str, cfg: dict, **context) -> list[Path]:
    """Make and write every entry of `stage` that exists for `cfg`, in registration order; returns the paths.
    `context`: what the stage gives its entries' functions by parameter name, besides `cfg`."""
    from ..files import write_csv, write_json, write_text

    context = {"cfg": cfg, **context}
    made, written = {}, []
    for entry in entries(stage, cfg):
        args = [_input(cfg, entry, f, made) for f in entry.inputs]
        value = entry.make(*args, **_wanted(entry, stage, context))
        if entry.kind == "figure":
            from .plotting import save_figure

            save_figure(value, entry.paths(cfg)[0].with_suffix(""))
        else:
            values = value if len(entry.files) > 1 else (value,)
            if not isinstance(values, tuple) or len(values) != len(entry.files):
                raise ConfigError(
                    f"table {entry.name!r} ({_source(entry.make)}): its function returns "
                    f"{type(value).__name__}, not one value per file of {entry.files}"
                )
            for f, v, path in zip(entry.files, values, entry.paths(cfg)):
                if isinstance(v, str):
                    write_text(path, v)
                elif isinstance(v, (dict, list)):
                    write_json(path, v)
                else:
                    write_csv(path, v)
                made[f] = v
        written += entry.paths(cfg)
    return written


def _wanted(entry: Output, stage: str, context: dict) -> dict:
    """The function's parameters after its inputs, by name from the stage's context."""
    params = list(inspect.signature(entry.make).parameters.values())[len(entry.inputs) :]
    out = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in context:
            out[p.name] = context[p.name]
        elif p.default is p.empty:
            raise ConfigError(
                f"{entry.kind} {entry.name!r} ({_source(entry.make)}): its parameter {p.name!r} is "
                f"neither an input nor given by stage {stage!r} (it gives {', '.join(context)})"
            )
    return out


def _input(cfg: dict, entry: Output, spec, made: dict):
    """An input table: made in this command, else read from tables/ (an optional one: None where unwanted or
    absent)."""
    file = _file(spec)
    if isinstance(spec, optional) and not spec.wanted(cfg):
        return None
    if file in made:
        return made[file]
    path = Path(cfg["results_dir"]) / "tables" / file
    if not path.is_file():
        if isinstance(spec, optional):
            return None
        if file not in TABLES:
            check_inputs()  # names the entry
        raise ArtifactError(
            f"{path}: missing; `python -m rethinking {TABLES[file].stage}` writes it, run that "
            f"first ({entry.kind} {entry.name!r} reads it)"
        )
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".csv":
        import pandas as pd

        return pd.read_csv(path, keep_default_na=True, dtype={"variant": str})
    return path.read_text()
