"""Real and structured label noise: the `label_file` kind (labels read from a .npy, .csv or CIFAR-10N-style .pt,
never unpickling code) and the `pairflip` kind (class-conditional pair noise), their options in params'
corruption_options, their artifacts, tables, figures, and the Snakemake and DVC stages they give."""

import json
import os
import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from rethinking import plan as rc
from rethinking.analysis import aggregate as ag
from rethinking.analysis import figures as F
from rethinking.data.corrupt import corrupt, corrupted_mask, load_corrupted
from rethinking.data.sources import prepare
from rethinking.errors import ConfigError, DataError
from rethinking.files import load_npz, sha256, write_csv
from rethinking.pipeline.dvcgen import generate
from rethinking.pipeline.stages import stage
from rethinking.plan import corruptions
from rethinking.plan.draws import pairflip_labels

from conftest import REPO, call_cli
from golden import artifact_digest

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10N_MAP = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
CIFAR10N_KEYS = ("clean_label", "worse_label", "aggre_label", "random_label1", "random_label2", "random_label3")


def _params(folder, corruptions_list, options=None, levels=None, **dataset):
    """A digits params file in `folder` (its results there too) with a group of these corruptions; its path."""
    group = {"name": "noise", "models": ["mlp_1x512"], "corruptions": list(corruptions_list)}
    if levels is not None:
        group["levels"] = levels
    raw = {
        "results_dir": str(folder / "results"),
        "dataset": {"source": "digits", **dataset},
        "preprocess": {"crop": 7},
        "training": {"device": "cpu", "max_epochs": 2},
        "grid": [group],
    }
    if options is not None:
        raw["corruption_options"] = options
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def base_labels(tmp_path):
    """The digits' base artifact (1,437 training labels) in tmp_path/results, and its training labels."""
    cfg = rc.load(_params(tmp_path, ["true_labels"]))
    prepare(cfg)
    _, base = load_npz(rc.base_artifact(cfg))
    return base["y_train"]


def _noisy(y, share=0.3, seed=1):
    """y with about `share` of its labels moved to another class (a reproducible stand-in for human labels)."""
    rng = np.random.default_rng(seed)
    moved = rng.random(len(y)) < share
    return np.where(moved, (y + rng.integers(1, 10, len(y))) % 10, y).astype(np.int64)


def _label_file_artifact(folder, options):
    cfg = rc.load(_params(folder, ["label_file"], {"label_file": options}))
    c = rc.Corruption.make("label_file")
    corrupt(cfg, c)
    meta, arrays = load_corrupted(cfg, c)
    return cfg, meta, arrays


# ------------------------------------------------------------------------------------------------ label_file


def test_a_cifar10n_shaped_pt_gives_its_key_labels(tmp_path, base_labels):
    sets = {k: _noisy(base_labels, 0.1 * i, seed=i) for i, k in enumerate(CIFAR10N_KEYS)}
    (tmp_path / "labels").mkdir()
    torch.save(sets, tmp_path / "labels" / "CIFAR-10_human.pt")
    # through the command, as the corrupt stage runs it (the path relative to the params file's folder)
    params = _params(
        tmp_path, ["label_file"], {"label_file": {"path": "labels/CIFAR-10_human.pt", "key": "worse_label"}}
    )
    proc = call_cli("corrupt", "--params", params, "--corruption", "label-file", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    cfg = rc.load(params)
    meta, arrays = load_corrupted(cfg, rc.Corruption.make("label_file"))
    np.testing.assert_array_equal(arrays["y_train"], sets["worse_label"])
    np.testing.assert_array_equal(arrays["y_train_true"], base_labels)
    np.testing.assert_array_equal(corrupted_mask(arrays), sets["worse_label"] != base_labels)
    assert corrupted_mask(arrays).any() and "x_train" in arrays  # images from the base
    path = tmp_path / "labels" / "CIFAR-10_human.pt"
    assert meta["label_file"] == {"path": str(path), "sha256": sha256(path), "key": "worse_label"}
    assert meta["labels_changed"] == pytest.approx(np.mean(sets["worse_label"] != base_labels))
    # another key, another label set
    _, _, arrays = _label_file_artifact(tmp_path, {"path": "labels/CIFAR-10_human.pt", "key": "clean_label"})
    np.testing.assert_array_equal(arrays["y_train"], base_labels)
    assert not corrupted_mask(arrays).any()


@pytest.mark.parametrize("fmt", ["npy", "csv-column", "csv-header"])
def test_npy_and_csv_label_files(tmp_path, base_labels, fmt):
    noisy = _noisy(base_labels)
    if fmt == "npy":
        np.save(tmp_path / "y.npy", noisy.astype(np.int32))
        options = {"path": "y.npy"}
    elif fmt == "csv-column":
        (tmp_path / "y.csv").write_text("".join(f"{v}\n" for v in noisy))
        options = {"path": "y.csv"}
    else:
        rows = "".join(f"{i},{t},{v}\n" for i, (t, v) in enumerate(zip(base_labels, noisy)))
        (tmp_path / "y.csv").write_text("index,clean,human\n" + rows)
        options = {"path": "y.csv", "key": "human"}
    _, meta, arrays = _label_file_artifact(tmp_path, options)
    np.testing.assert_array_equal(arrays["y_train"], noisy)
    assert arrays["y_train"].dtype == np.int64
    np.testing.assert_array_equal(corrupted_mask(arrays), noisy != base_labels)
    assert meta["label_file"]["key"] == options.get("key")


class _RunsCode:
    """A pickle that would run a shell command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pt_whose_pickle_runs_code_is_refused_and_never_runs(tmp_path, base_labels):
    marker = tmp_path / "marker"
    torch.save({"worse_label": _RunsCode(marker), "clean_label": base_labels}, tmp_path / "evil.pt")
    with pytest.raises(DataError) as err:
        _label_file_artifact(tmp_path, {"path": "evil.pt", "key": "worse_label"})
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "evil.pt") in message and "weights_only" in message
    assert "GLOBAL posix.system" in message  # what it would have called
    assert not marker.exists()
    # the command says so in one line too
    params = tmp_path / "params.yaml"
    proc = call_cli("corrupt", "--params", params, "--corruption", "label-file", cwd=REPO)
    assert proc.returncode == 2 and "evil.pt" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_bad_label_files_are_refused_naming_the_file(tmp_path, base_labels):
    n = len(base_labels)
    np.save(tmp_path / "object.npy", np.array([1, "cat"] * (n // 2) + [1], dtype=object), allow_pickle=True)
    np.save(tmp_path / "short.npy", base_labels[:-1])
    np.save(tmp_path / "range.npy", np.where(np.arange(n) == 5, 10, base_labels))
    np.save(tmp_path / "negative.npy", np.where(np.arange(n) == 5, -1, base_labels))
    np.save(tmp_path / "float.npy", base_labels + 0.5)
    (tmp_path / "text.csv").write_text("3\ncat\n")
    torch.save({"worse_label": base_labels}, tmp_path / "h.pt")
    torch.save([base_labels], tmp_path / "list.pt")
    cases = [
        ({"path": "object.npy"}, "not a plain numeric .npy"),
        ({"path": "short.npy"}, f"{n - 1} labels, expected {n}"),
        ({"path": "range.npy"}, "label 10 is outside 0..9"),
        ({"path": "negative.npy"}, "label -1 is outside 0..9"),
        ({"path": "float.npy"}, "expected integer class labels"),
        ({"path": "text.csv"}, "line 2: 'cat' is not an integer label"),
        ({"path": "h.pt", "key": "aggre_label"}, "no key 'aggre_label' \\(keys: worse_label\\)"),
        ({"path": "list.pt", "key": "worse_label"}, "holds a list, expected a dict"),
        ({"path": "missing.npy"}, "no such label file"),
    ]
    for options, message in cases:
        with pytest.raises(DataError, match=message) as err:
            _label_file_artifact(tmp_path, options)
        assert str(tmp_path / options["path"]) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "options, message",
    [
        (None, r"corruption_options\.label_file\.path: required with the corruption label_file"),
        ({"label_file": {"key": "worse_label"}}, r"corruption_options\.label_file\.path: required"),
        ({"label_file": {"path": "h.pt"}}, r"corruption_options\.label_file\.key: required for a \.pt file"),
        ({"label_file": {"path": "y.npy", "key": "x"}}, r"label_file\.key: a \.npy file holds one array"),
        ({"label_file": {"path": "y.txt"}}, r"label_file\.path: 'y\.txt' has suffix '\.txt', expected \.npy"),
        ({"label_file": {"path": "y.npy", "column": 2}}, r"label_file\.column: unknown option \(allowed: path, key\)"),
        ({"label_file": {"path": "y.npy"}, "noise": {"p": 1}}, r"corruption_options\.noise: not a corruption kind"),
        ({"label_file": {"path": "y.npy"}, "gaussian": {"p": 1}}, r"'gaussian' takes no options"),
        ({"label_file": {"path": "y.npy"}, "pairflip": {"map": [1, 2]}}, r"corruption_options\.pairflip\.map"),
    ],
)
def test_bad_options_are_one_line_config_errors_naming_the_key(tmp_path, options, message):
    path = _params(tmp_path, ["label_file"], options)
    with pytest.raises(ConfigError, match=message) as err:
        rc.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_options_of_a_kind_the_grid_does_not_use_are_not_required(tmp_path):
    cfg = rc.load(_params(tmp_path, ["true_labels"], {"label_file": {"key": "worse_label"}}))
    assert corruptions.options_for(cfg, "true_labels") == {}


# -------------------------------------------------------------------------------------------------- pairflip


def _within(count, n, p, sd=4.0):
    return abs(count - n * p) <= sd * np.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("mapping", [None, CIFAR10N_MAP])
def test_pairflip_moves_the_expected_share_along_the_map(mapping):
    y = np.arange(6000) % 10
    options = corruptions.options_for({"corruption_options": {"pairflip": {"map": mapping}}}, "pairflip")
    p = 0.3
    out = corruptions.draw("pairflip", p, {"y_train": y, "classes": CIFAR10}, 10, dataset_seed=0, options=options)
    got = out["y_train"]
    target = (np.arange(10) + 1) % 10 if mapping is None else np.arange(10)
    for source, dest in (mapping or {}).items():
        target[CIFAR10.index(source)] = CIFAR10.index(dest)
    moved = got != y
    np.testing.assert_array_equal(got[moved], target[y[moved]])  # along the map only
    mapped = target[y] != y
    assert not moved[~mapped].any()  # every other label kept (frog, ship; the map's unnamed classes)
    assert _within(moved[mapped].sum(), mapped.sum(), p)
    if mapping is not None:
        assert set(np.unique(y[moved])) == {CIFAR10.index(c) for c in mapping}


def test_pairflip_is_seeded_by_the_dataset_seed():
    y = np.arange(3000) % 10
    opts = {"map": None}

    def draw(seed):
        return corruptions.draw("pairflip", 0.4, {"y_train": y}, 10, seed, opts)["y_train"]

    np.testing.assert_array_equal(draw(3), draw(3))
    assert (draw(3) != draw(4)).any()
    # its own seed key: never the uniform labels' draw
    rng = np.random.default_rng([3, 2, 5, 400_000])
    np.testing.assert_array_equal(draw(3), pairflip_labels(y, 0.4, (np.arange(10) + 1) % 10, rng))


def test_pairflip_through_the_stage_and_the_grid(tmp_path):
    mapping = {"3": "5", "5": "3", "1": "7"}
    path = _params(tmp_path, ["pairflip", "labels"], {"pairflip": {"map": mapping}}, levels=[0.0, 0.4])
    cfg = rc.load(path)
    ids = [c.id for c in rc.corruptions_of(rc.expand_runs(cfg))]
    assert ids == ["labels-0.4", "pairflip-0.4", "true-labels"]  # level 0 is the true labels, trained once
    prepare(cfg)
    c = rc.Corruption.parse("pairflip-0.4")
    assert c.kind == "pairflip" and c.label_level is None  # not on Fig. 1b/1c's axis
    assert rc.Corruption.parse("labels-0.4").label_level == 0.4
    corrupt(cfg, c)
    meta, arrays = load_corrupted(cfg, c)
    y, got = arrays["y_train_true"], arrays["y_train"]
    moved = corrupted_mask(arrays)
    pairs = {(int(a), int(b)) for a, b in zip(y[moved], got[moved])}
    assert pairs == {(3, 5), (5, 3), (1, 7)} and meta["pairflip_map"] == mapping
    mapped = np.isin(y, [1, 3, 5])
    assert not moved[~mapped].any() and _within(moved.sum(), mapped.sum(), 0.4)
    # a different dataset seed draws other flips
    (tmp_path / "seed1").mkdir()
    cfg2 = rc.load(_params(tmp_path / "seed1", ["pairflip"], {"pairflip": {"map": mapping}}, levels=[0.4], seed=1))
    prepare(cfg2)
    corrupt(cfg2, c)
    assert (load_corrupted(cfg2, c)[1]["y_train"] != got).any()


def test_a_pairflip_map_naming_no_class_is_refused(tmp_path):
    cfg = rc.load(_params(tmp_path, ["pairflip"], {"pairflip": {"map": {"cat": "dog"}}}, levels=[0.5]))
    prepare(cfg)
    with pytest.raises(ConfigError, match=r"corruption_options\.pairflip\.map\.cat: 'cat' is not a class .*0, 1, 2"):
        corrupt(cfg, rc.Corruption.parse("pairflip-0.5"))


def test_existing_artifacts_keep_their_bytes_with_the_new_kinds_in_the_grid(tmp_path, monkeypatch):
    """config/tiny.yaml's artifacts, with pairflip and options added to its params, hold the arrays recorded
    (golden digests)."""
    golden = json.loads((REPO / "tests" / "data" / "golden" / "tiny.json").read_text())["artifacts"]
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    raw["grid"] = [g for g in raw["grid"] if not any(":" in m for m in g["models"])]
    raw["grid"].append({"name": "pf", "models": ["mlp_1x512"], "corruptions": ["pairflip"], "levels": [0.5]})
    raw["corruption_options"] = {"pairflip": {"map": None}}
    cfg = rc.validate(raw)
    prepare(cfg)
    data = rc.base_artifact(cfg).parent.parent
    got = {}
    for c in [None, *rc.corruptions_of(rc.expand_runs(cfg))]:
        p = rc.base_artifact(cfg) if c is None else corrupt(cfg, c)
        got[p.relative_to(data).as_posix()] = artifact_digest(p)
    assert {k: got[k] for k in golden} == golden and "digits-train100-test50/pairflip-0.5.npz" in got


# ---------------------------------------------------------------------------------- tables and figures


def _epochs_csv(path, peak):
    path.mkdir(parents=True)
    e = pd.DataFrame({"epoch": [1, 2, 3], "step": [5, 10, 15], "train_acc": [0.5, 0.8, 1.0]})
    e["test_acc"] = [0.5, peak, 0.4]
    e["clean_acc"], e["noisy_memorized"], e["noisy_true"] = [50, 80, 100], [5, 50, 100], [20, 10, 0]
    e.to_csv(path / "epochs.csv", index=False)


def test_labels_and_pairflip_at_one_level_are_never_averaged(tmp_path):
    cfg = {"results_dir": str(tmp_path)}
    cids = ["true-labels", "labels-0.4", "pairflip-0.4", "label-file"]
    peaks = {"true-labels": 0.9, "labels-0.4": 0.7, "pairflip-0.4": 0.6, "label-file": 0.65}
    rows = []
    for cid in cids:
        for seed in (0, 1):
            run = f"d/{cid}/mlp_1x512/none/seed{seed}"
            _epochs_csv(tmp_path / "runs" / run, peaks[cid])
            c = rc.Corruption.parse(cid)
            rows.append(
                dict(run=run, model="mlp_1x512", regularizers="none", variant="", corruption=cid, seed=seed)
                | dict(status="fitted", epochs=3, label_level=c.label_level)
            )
    runs = pd.DataFrame(rows)
    mem = ag.memorization(cfg, runs)
    assert list(mem.columns) == ag.memorization_columns()
    kinds = mem.drop_duplicates("corruption").set_index("corruption")[["corruption_kind", "level"]]
    assert kinds.loc["labels-0.4"].tolist() == ["labels", 0.4] and kinds.loc["pairflip-0.4"].tolist() == [
        "pairflip",
        0.4,
    ]
    assert kinds.loc["label-file", "corruption_kind"] == "label_file" and np.isnan(kinds.loc["label-file", "level"])
    assert list(dict.fromkeys(mem["corruption"])) == ["labels-0.4", "pairflip-0.4", "label-file"]  # registry order
    es = ag.early_stopping(cfg, runs)
    best = es.drop_duplicates("corruption").set_index("corruption")["best_test_acc_mean"]
    assert best.to_dict() == pytest.approx({c: 100 * peaks[c] for c in cids})  # one cell per corruption
    # the figures: a panel per noise, and pairflip's own early-stopping series
    write_csv(tmp_path / "mem.csv", mem)
    write_csv(tmp_path / "es.csv", es)
    fig = F.memorization(pd.read_csv(tmp_path / "mem.csv", dtype={"variant": str}))
    titles = [ax.get_title() for ax in fig.axes if ax.axison and ax.get_title()]
    assert titles == [
        "MLP 1x512, none: p = 0.4",
        "MLP 1x512, none: pair flips, p = 0.4",
        "MLP 1x512, none: labels from a file",
    ]
    fig = F.early_stopping(pd.read_csv(tmp_path / "es.csv", dtype={"variant": str}))
    (ax,) = [a for a in fig.axes if a.axison]
    lines = {line.get_gid(): line.get_xydata() for line in ax.lines}
    np.testing.assert_allclose(lines["fitted:best during training"], [[0, 90], [0.4, 70]])
    np.testing.assert_allclose(lines["fitted:best during training (pair flips)"], [[0, 90], [0.4, 60]])


# ------------------------------------------------------------------------------------ Snakemake and DVC


def test_snakemake_and_dvc_see_the_label_file_and_the_options(tmp_path):
    from test_pipeline import dry_run_jobs, dvc_name, dvc_stages, sh

    np.save(tmp_path / "y.npy", np.zeros(100, dtype=np.int64))
    options = {"label_file": {"path": "y.npy"}, "pairflip": {"map": {"3": "5"}}}
    params = _params(tmp_path, ["label_file", "pairflip"], options, levels=[0.4], train_size=100, test_size=50)
    dry_run = sh(f"snakemake -n -p -F --nolock --configfile {params}", REPO).stdout
    jobs = dry_run_jobs(dry_run)
    inputs = {  # each corrupt job's input files, from its block of the dry run
        re.search(r"wildcards: corruption=(\S+)", block).group(1): set(
            re.search(r"^\s*input: (.*)$", block, flags=re.M).group(1).split(", ")
        )
        for block in re.split(r"\n(?=(?:local)?rule )", dry_run)
        if block.startswith("rule corrupt:")
    }
    doc = yaml.safe_load(generate(str(params)))
    stages = dvc_stages(doc)
    corrupt_jobs = {j["wildcards"]["corruption"]: j for j in jobs if j["rule"] == "corrupt"}
    ds = "digits-train100-test50"
    assert set(corrupt_jobs) == {f"{ds}/label-file", f"{ds}/pairflip-0.4"}
    for name, job in corrupt_jobs.items():
        st = stages[dvc_name(job, stages)]
        assert job["output"] == st["outputs"] and job["shell"] == st["cmd"]
        has_file = str(tmp_path / "y.npy") in inputs[name]
        assert has_file == (name == f"{ds}/label-file") == (str(tmp_path / "y.npy") in st["deps"])
    assert set(doc["stages"]) >= {"corrupt", "corrupt_label_file"}
    # Snakemake reruns a corrupt job when its own kind's options change (the rule's params.settings)
    cfg = rc.load(params)
    settings = stage("corrupt", cfg).settings
    assert settings(cfg, "pairflip-0.4") == {"map": {"3": "5"}} and settings(cfg, "true-labels") == {}
    assert settings(cfg, "label-file") == {"path": str(tmp_path / "y.npy"), "key": None}
    for name in ("corrupt", "corrupt_label_file"):
        assert doc["stages"][name]["do"]["params"] == [{str(params): ["corruption_options"]}]
    # and its memorization plots
    assert {p for entry in doc["plots"] for p in entry} >= {
        "memorization_digits-train100-test50__label-file__mlp_1x512__none__seed0",
        "memorization_digits-train100-test50__pairflip-0.4__mlp_1x512__none__seed0",
    }


def test_the_readme_recipe_for_a_kind_without_options_still_works(tmp_path):
    """README "Add a corruption kind": a four-argument draw and a free seed key (7; 5 and 6 are the new kinds')."""

    def invert(rng, base, level, num_classes):
        return {"x_train": 255 - base["x_train"], "x_test": 255 - base["x_test"]}

    corruptions.register(
        corruptions.CorruptionKind(
            "inverted_pixels", seed_key=7, touches="pixels", draw=invert, epoch_factor=1.0, legend="inverted pixels"
        )
    )
    try:
        cfg = rc.load(_params(tmp_path, ["inverted_pixels"], train_size=100, test_size=50))
        prepare(cfg)
        c = rc.Corruption.make("inverted_pixels")
        _, base = load_npz(rc.base_artifact(cfg))
        _, arrays = load_npz(corrupt(cfg, c))
        np.testing.assert_array_equal(arrays["x_train"], 255 - base["x_train"])
        assert corruptions.options_for(cfg, "inverted_pixels") == {}
    finally:
        corruptions.unregister("inverted_pixels")


@pytest.mark.slow
def test_snakemake_remakes_only_what_an_option_or_the_label_file_changes(project):
    """A real run of both kinds in a clone, then dry runs: a new pairflip map remakes pairflip's artifact (and
    what follows it) only, new contents of the label file the label file's only."""
    from test_pipeline import dry_run_jobs, sh

    options = {"label_file": {"path": "y.npy"}, "pairflip": {"map": {"3": "5", "5": "3"}}}
    params = _params(
        project / "config", ["pairflip", "label_file"], options, levels=[0.5], train_size=100, test_size=50
    )
    raw = yaml.safe_load(params.read_text())
    raw["results_dir"] = "results/label-noise-test"
    raw["training"].update(batch_size=25, log_every=2, pack=1)
    params.write_text(yaml.safe_dump(raw))
    rel = params.relative_to(project)
    sh(f"python -m rethinking prepare --params {rel}", project)
    _, base = load_npz(next((project / "results/label-noise-test/data").glob("*/base.npz")))
    np.save(project / "config" / "y.npy", (base["y_train"] + (np.arange(100) < 20)) % 10)
    sh(f"snakemake --cores 2 --configfile {rel}", project)
    mem = pd.read_csv(project / "results/label-noise-test/tables/memorization.csv")
    assert set(mem["corruption_kind"]) == {"pairflip", "label_file"}

    def remade():
        jobs = dry_run_jobs(sh(f"snakemake -n -p --configfile {rel}", project).stdout)
        return {j["wildcards"]["corruption"].rsplit("/", 1)[-1] for j in jobs if j["rule"] == "corrupt"}

    assert remade() == set()
    raw["corruption_options"]["pairflip"]["map"] = {"3": "8", "8": "3"}
    params.write_text(yaml.safe_dump(raw))
    assert remade() == {"pairflip-0.5"}
    raw["corruption_options"]["pairflip"]["map"] = {"3": "5", "5": "3"}
    params.write_text(yaml.safe_dump(raw))
    np.save(project / "config" / "y.npy", base["y_train"])
    assert remade() == {"label-file"}
