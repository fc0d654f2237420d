"""Params: validation with clear errors, the grid expansion and run identities."""

import copy

import pytest
import yaml

from rethinking import plan as rc

from conftest import REPO, call_cli, tiny_params, tree_files

BASE = tiny_params()


def cfg_with(**changes):
    raw = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        node[last] = value
    return raw


def test_every_config_file_is_valid():
    for path in [REPO / "params.yaml", *sorted((REPO / "config").glob("*.yaml"))]:
        cfg = rc.load(path)
        assert rc.expand_runs(cfg), path


def test_defaults_filled_and_runs_deduplicated():
    cfg = rc.validate(BASE)
    assert cfg["training"]["momentum"] == 0.9
    runs = rc.expand_runs(cfg)
    ids = [r.id for r in runs]
    assert len(ids) == len(set(ids))
    # fig1a's true and random labels are fig1bc's levels 0 and 1: trained once
    assert "digits-train100-test50/true-labels/mlp_1x512/none/seed0" in ids
    assert "digits-train100-test50/random-labels/mlp_1x512/none/seed0" in ids
    assert "digits-train100-test50/labels-0.5/mlp_1x512/none/seed0" in ids
    assert len(ids) == 7


def test_run_ids_round_trip():
    cfg = rc.load(REPO / "config" / "paper-cifar10.yaml")
    for run in rc.expand_runs(cfg):
        assert rc.find_run(cfg, run.id) == run


def test_seeds_multiply_runs():
    one = rc.expand_runs(rc.validate(BASE))
    three = rc.expand_runs(rc.validate(cfg_with(seeds=[0, 1, 2])))
    assert len(three) == 3 * len(one)


def test_regularizer_names_are_canonical():
    assert rc.regularizer_id("wd+crop") == "crop-wd"
    assert rc.regularizer_id("dropout-crop") == "crop-dropout"
    assert rc.regularizer_id("none") == "none"


@pytest.mark.parametrize(
    "changes, key, allowed",
    [
        ({"grid__0__models": ["resnet"]}, "grid[0].models[0]", "mlp_1x512"),
        ({"grid__0__corruptions": ["blur"]}, "grid[0].corruptions[0]", "random_labels"),
        ({"dataset__source": "emnist"}, "dataset.source", "imagefolder"),
        ({"grid__1__levels": [0.2, 1.5]}, "grid[1].levels[1]", "maximum"),
        ({"grid__1__levels": [-0.1]}, "grid[1].levels[0]", "minimum"),
        ({"training__batch_size": "big"}, "training.batch_size", "integer"),
        ({"training__bacth_size": 3}, "training", "batch_size"),
        ({"seeds": []}, "seeds", "non-empty"),
        ({"grid__0__regularizers": ["crop+crop"]}, "grid[0].regularizers", "twice"),
    ],
)
def test_bad_params_name_key_value_and_allowed(changes, key, allowed):
    with pytest.raises(rc.ConfigError) as err:
        rc.validate(cfg_with(**changes), "p.yaml")
    msg = str(err.value)
    assert msg.startswith(f"p.yaml: {key}"), msg
    assert allowed in msg, msg


def test_labels_need_levels():
    raw = cfg_with()
    del raw["grid"][1]["levels"]
    with pytest.raises(rc.ConfigError, match=r"grid\[1\]\.levels: required"):
        rc.validate(raw)


GRID = "grid:\n  - {name: a, models: [mlp_1x512], corruptions: [true_labels]}\n"
BAD_STRUCTURE = [
    ("grid:\n  - {name: a, models: [resnet], corruptions: [true_labels]}\n", "mlp_<depth>x<width>"),
    ("grid:\n  - {name: a, models: [mlp_1x512], corruptions: [labels], levels: [2]}\n", "levels"),
    ("grid: [\n", "not valid YAML"),
]
BAD_DATA = [
    ("dataset: {source: imagefolder, root: /nonexistent/folder}\n" + GRID, "/nonexistent/folder"),
    ("dataset: {source: imagefolder}\n" + GRID, "dataset.root"),
    ("dataset: {source: cifar10, root: /nonexistent/c10}\n" + GRID, "cifar-10-batches-py"),
]


def _bad_run(tmp_path, command, text):
    (tmp_path / "bad.yaml").write_text(text)
    return call_cli(command, "--params", "bad.yaml", cwd=tmp_path)


@pytest.mark.parametrize("text, needle", BAD_STRUCTURE + BAD_DATA)
def test_prepare_bad_input_exits_cleanly_and_writes_nothing(tmp_path, text, needle):
    proc = _bad_run(tmp_path, "prepare", text)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert tree_files(tmp_path / "results") == []


@pytest.mark.parametrize("text, needle", BAD_STRUCTURE)
def test_runs_bad_params_exit_cleanly(tmp_path, text, needle):
    proc = _bad_run(tmp_path, "runs", text)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("text, needle", BAD_DATA)
def test_listing_runs_needs_no_data(tmp_path, text, needle):
    assert _bad_run(tmp_path, "runs", text).returncode == 0


def test_cli_missing_params_file(tmp_path):
    proc = call_cli("runs", "--params", "nope.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "nope.yaml: no such params file" in proc.stderr


def test_train_rejects_a_run_outside_the_grid(tmp_path):
    proc = call_cli(
        "train",
        "--params",
        REPO / "config" / "tiny.yaml",
        "--run",
        "digits/true-labels/resnet/none/seed0",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "not in this config's grid" in proc.stderr
    assert tree_files(tmp_path / "results") == []


@pytest.mark.parametrize(
    "where, value", [(("seeds",), [0.0]), (("training", "batch_size"), 25.0), (("seeds",), [True])]
)
def test_integer_keys_take_ints_only(where, value):
    """JSON Schema counts 0.0 as an integer; here it is refused (it made run ids like seed0.0, found by
    the fuzz test in test_faults)."""
    raw = copy.deepcopy(BASE)
    node = raw
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    with pytest.raises(rc.ConfigError, match="is not of type 'integer'"):
        rc.validate(raw, "p.yaml")


@pytest.mark.parametrize(
    "text, key",
    [
        (
            "grid:\n- {name: g, models: [mlp_1x512], corruptions: [labels], levels: [.nan, 0.5]}\n",
            r"grid\[0\]\.levels\[0\]",
        ),
        ("training: {weight_decay: .inf}\n", "training.weight_decay"),
        ("section5: {kernels: {noise_levels: [0.0, .nan]}}\n", r"section5\.kernels\.noise_levels\[1\]"),
    ],
)
def test_nan_and_infinity_are_refused_by_key(text, key):
    """JSON Schema's minimum and maximum let NaN through (every comparison with it is false): a level of
    .nan passed validation and failed later in expand_runs (found by the fuzz test in test_faults)."""
    raw = copy.deepcopy(BASE)
    for k, v in yaml.safe_load(text).items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    with pytest.raises(rc.ConfigError, match=rf"^p\.yaml: {key}: -?(nan|inf) is not a finite number$"):
        rc.validate(raw, "p.yaml")


@pytest.mark.parametrize("results_dir", ["taken", "taken/sub"])
def test_a_results_dir_that_is_a_file_is_refused_by_key(tmp_path, monkeypatch, capsys, results_dir):
    """An existing file where the results folder (or one of its parents) would be: one line naming the key,
    before any stage writes (it was a NotADirectoryError traceback from `prepare`)."""
    from rethinking import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("not a folder\n")
    (tmp_path / "p.yaml").write_text(f"results_dir: {results_dir}\n" + GRID)
    for command in ("prepare", "runs"):
        assert cli.main([command, "--params", "p.yaml"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: p.yaml: results_dir:") and "file" in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "taken").read_text() == "not a folder\n"
