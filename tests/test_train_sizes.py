"""A grid group's `train_sizes` (issue #24): each size its own dataset id (`<id>-n<size>`), base artifact (a nested,
class-balanced subset of the params' dataset with its test set unchanged), corrupted artifacts and runs; the
params' dataset's run ids unchanged; Snakemake and DVC expanding it to the same jobs; one-line errors."""

import numpy as np
import pandas as pd
import pytest
import yaml

from rethinking import plan as rc
from rethinking.errors import ConfigError
from rethinking.files import load_npz, sha256

from conftest import REPO, call_cli, write_params

GRID = """\
results_dir: results
seeds: [0]
dataset: {{source: digits}}
training: {{max_epochs: 2, batch_size: 32}}
grid:
  - name: sizes
    models: [mlp_1x8, mlp_1x32]
    corruptions: [labels]
    levels: [0.0, 0.2]
{sizes}"""


def _cfg(tmp_path, sizes="    train_sizes: [100, 300, null]\n", name="params.yaml"):
    return write_params(tmp_path / name, GRID.format(sizes=sizes))


def test_sizes_expand_to_their_own_datasets_and_keep_todays_run_ids(tmp_path):
    sized = rc.load(_cfg(tmp_path))
    plain = rc.load(_cfg(tmp_path, sizes="", name="plain.yaml"))
    runs = [r.id for r in rc.expand_runs(sized)]
    assert [r for r in runs if r.startswith("digits/")] == [r.id for r in rc.expand_runs(plain)]  # unchanged
    assert "digits-n100/labels-0.2/mlp_1x8/none/seed0" in runs and len(runs) == 3 * 2 * 2
    assert rc.dataset_ids(sized) == ["digits", "digits-n100", "digits-n300"] and rc.dataset_ids(plain) == ["digits"]
    names = [rc.artifact_name(*a) for a in rc.artifacts_of(rc.expand_runs(sized))]
    assert names == [
        f"{d}/{c}" for d in ("digits", "digits-n100", "digits-n300") for c in ("labels-0.2", "true-labels")
    ]
    assert rc.parse_artifact(sized, "digits-n100/labels-0.2") == ("digits-n100", rc.Corruption.make("labels", 0.2))
    assert rc.parse_artifact(sized, "labels-0.2") == ("digits", rc.Corruption.make("labels", 0.2))  # bare: params'
    assert rc.train_size_of(sized, "digits-n300") == 300 and rc.train_size_of(sized, "digits") is None
    with pytest.raises(ConfigError, match=r"dataset: 'digits-n7' is not a dataset of this config \(allowed: digits,"):
        rc.train_size_of(sized, "digits-n7")


def test_a_size_only_group_still_prepares_the_params_dataset(tmp_path):
    """A group with sizes only: its runs are all `-n` ones, and the params' dataset is still prepared (each size
    is cut from it; Section 5 reads it)."""
    cfg = rc.load(_cfg(tmp_path, sizes="    train_sizes: [200]\n"))
    assert {r.dataset for r in rc.expand_runs(cfg)} == {"digits-n200"}
    assert rc.dataset_ids(cfg) == ["digits", "digits-n200"]


@pytest.mark.parametrize(
    "sizes, message",
    [
        ("    train_sizes: [5]\n", r"grid\[0\]\.train_sizes\[0\]: 5 is less than the minimum of 10"),
        ("    train_sizes: [100, 100]\n", r"grid\[0\]\.train_sizes: \[100, 100\] has non-unique elements"),
        ("    train_sizes: []\n", r"grid\[0\]\.train_sizes: \[\] should be non-empty"),
    ],
)
def test_bad_sizes_are_one_line_errors(tmp_path, sizes, message):
    with pytest.raises(ConfigError, match=message):
        rc.load(_cfg(tmp_path, sizes=sizes))


def test_a_label_file_cannot_take_sizes(tmp_path):
    np.save(tmp_path / "y.npy", np.zeros(1437, dtype=np.int64))
    text = (
        GRID.format(sizes="    train_sizes: [100]\n")
        .replace("[labels]", "[label_file]")
        .replace("    levels: [0.0, 0.2]\n", "")
    )
    text += "corruption_options: {label_file: {path: y.npy}}\n"
    with pytest.raises(ConfigError, match=r"grid\[0\]\.train_sizes: not possible with the corruption 'label_file'"):
        rc.load(write_params(tmp_path / "p.yaml", text))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The params' dataset and two sizes prepared by the CLI, as the prepare jobs run them."""
    root = tmp_path_factory.mktemp("sizes")
    params = _cfg(root)
    for dataset in ("digits", "digits-n100", "digits-n300"):
        call_cli("prepare", "--params", params, "--dataset", dataset, cwd=root, check=True)
    return root, params, rc.load(params)


def test_a_size_is_a_nested_balanced_subset_with_the_test_set_unchanged(prepared):
    root, _, cfg = prepared
    meta_full, full = load_npz(root / "results/data/digits/base.npz")
    meta, small = load_npz(root / "results/data/digits-n100/base.npz")
    _, large = load_npz(root / "results/data/digits-n300/base.npz")
    assert np.bincount(small["y_train"]).tolist() == [10] * 10 and np.bincount(large["y_train"]).tolist() == [30] * 10
    assert set(small["origin_train"]) < set(large["origin_train"])  # nested: a larger size adds images
    row = {o: i for i, o in enumerate(full["origin_train"])}
    at = [row[o] for o in small["origin_train"]]
    assert np.array_equal(small["x_train"], full["x_train"][at]) and np.array_equal(
        small["y_train"], full["y_train"][at]
    )
    assert np.array_equal(small["x_test"], full["x_test"]) and np.array_equal(small["y_test"], full["y_test"])
    assert meta["dataset"] == "digits-n100" and meta["provenance"]["train_size"] == 100
    assert meta["subset_of"] == {
        "path": "results/data/digits/base.npz",
        "sha256": sha256(root / "results/data/digits/base.npz"),
        "dataset": "digits",
    }
    assert meta["classes"] == meta_full["classes"]


def test_a_sized_run_trains_on_its_own_artifact(prepared):
    root, params, _ = prepared
    call_cli("corrupt", "--params", params, "--corruption", "digits-n100/labels-0.2", cwd=root, check=True)
    run = "digits-n100/labels-0.2/mlp_1x8/none/seed0"
    call_cli("train", "--params", params, "--run", run, cwd=root, check=True)
    summary = yaml.safe_load((root / "results/runs" / run / "summary.json").read_text())
    assert summary["n_train"] == 100 and summary["dataset"] == "digits-n100"
    _, record = load_npz(root / "results/runs" / run / "examples.npz")
    _, base = load_npz(root / "results/data/digits-n100/base.npz")
    assert np.array_equal(record["origin"], base["origin_train"])  # the record names the source's images
    meta, labels = load_npz(root / "results/data/digits-n100/labels-0.2.npz")
    assert meta["dataset"] == "digits-n100" and len(labels["y_train"]) == 100


@pytest.mark.parametrize(
    "args, message",
    [
        (("prepare", "--dataset", "digits-n7"), "dataset: 'digits-n7' is not a dataset of this config"),
        (("corrupt", "--corruption", "digits-n7/labels-0.2"), "--corruption: 'digits-n7/labels-0.2' is not in"),
    ],
)
def test_a_dataset_outside_the_grid_is_one_line(prepared, args, message):
    root, params, _ = prepared
    proc = call_cli(*args, "--params", params, cwd=root)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_size_larger_than_the_training_set_is_one_line(tmp_path):
    params = _cfg(tmp_path, sizes="    train_sizes: [5000]\n")
    call_cli("prepare", "--params", params, cwd=tmp_path, check=True)
    proc = call_cli("prepare", "--params", params, "--dataset", "digits-n5000", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "grid: train_sizes: 5000 is larger than the training set (1437 images)" in proc.stderr
    assert not (tmp_path / "results/data/digits-n5000").exists()


def test_snakemake_and_dvc_give_every_size_its_jobs(tmp_path):
    from rethinking.pipeline.dvcgen import generate

    from test_pipeline import dry_run_jobs, dvc_name, dvc_stages, sh

    params = _cfg(tmp_path, sizes="    train_sizes: [100, null]\n")
    jobs = dry_run_jobs(sh(f"snakemake -n -p -F --nolock --configfile {params}", REPO).stdout)
    stages = dvc_stages(yaml.safe_load(generate(str(params))))
    prepare = {j["wildcards"]["dataset"]: j for j in jobs if j["rule"] == "prepare"}
    assert sorted(prepare) == ["digits", "digits-n100"]
    assert dvc_name(prepare["digits-n100"], stages) == "prepare_subset@digits-n100"
    assert "results/data/digits/base.npz" in stages["prepare_subset@digits-n100"]["deps"]
    corrupt = sorted(j["wildcards"]["corruption"] for j in jobs if j["rule"] == "corrupt")
    assert corrupt == ["digits-n100/labels-0.2", "digits-n100/true-labels", "digits/labels-0.2", "digits/true-labels"]
    for job in jobs:
        if job["rule"] in ("prepare", "corrupt"):
            st = stages[dvc_name(job, stages)]
            assert job["output"] == st["outputs"] and job["shell"] == st["cmd"]
    trained = sorted(o.split("/runs/")[1][: -len("/summary.json")] for j in jobs for o in j["output"] if "summary" in o)
    assert trained == sorted(r.id for r in rc.expand_runs(rc.load(params)))


def test_a_run_can_train_on_after_it_fits(tmp_path):
    """training.stop_at_fit: false (epoch-wise double descent): the run trains to max_epochs, its status stays
    `fitted` with the step of the first fit, and its epochs up to the fit are those of a run that stops there.
    Only such runs name the setting (every other run's settings and checkpoints are what they were)."""
    text = GRID.format(sizes="    train_sizes: [100]\n").replace("max_epochs: 2", "max_epochs: 40")
    text = text.replace("[mlp_1x8, mlp_1x32]", "[mlp_1x512]").replace("[0.0, 0.2]", "[0.0]")
    stops, goes = tmp_path / "stops", tmp_path / "goes"
    for folder, stop in ((stops, "true"), (goes, "false")):
        folder.mkdir()
        training = f"batch_size: 10, lr: {{mlp_1x512: 0.05}}, stop_at_fit: {stop}}}"
        params = write_params(folder / "params.yaml", text.replace("batch_size: 32}", training))
        for dataset in ("digits", "digits-n100"):
            call_cli("prepare", "--params", params, "--dataset", dataset, cwd=folder, check=True)
        call_cli("corrupt", "--params", params, "--corruption", "digits-n100/true-labels", cwd=folder, check=True)
        call_cli(
            "train", "--params", params, "--run", "digits-n100/true-labels/mlp_1x512/none/seed0", cwd=folder, check=True
        )
    run = "results/runs/digits-n100/true-labels/mlp_1x512/none/seed0"
    a = yaml.safe_load((stops / run / "summary.json").read_text())
    b = yaml.safe_load((goes / run / "summary.json").read_text())
    assert a["status"] == b["status"] == "fitted" and a["step_first_fit"] == b["step_first_fit"]
    assert a["epochs"] < 40 and b["epochs"] == 40 and "stop_at_fit" not in a and b["stop_at_fit"] is False
    rows_a = pd.read_csv(stops / run / "epochs.csv").drop(columns="wall_time")
    rows_b = pd.read_csv(goes / run / "epochs.csv").drop(columns="wall_time")
    assert len(rows_b) == 40 and rows_b.head(len(rows_a)).equals(rows_a)  # the same run until the fit, then on
