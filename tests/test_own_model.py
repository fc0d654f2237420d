"""Issue #16 end to end: a user's own model file, mlp_<d>x<w> and resnet18 through Snakemake and DVC in a
clone, and an edit of the model file reruns exactly that model's runs (Snakemake's dry run, `dvc status`)."""
import json

import pandas as pd
import yaml

from conftest import clone_project
from test_pipeline import sh, trained_runs

PARAMS = {
    "results_dir": "results/own", "seeds": [0],
    "dataset": {"source": "digits", "train_size": 100, "test_size": 50},
    "preprocess": {"crop": 7},
    "training": {"batch_size": 25, "max_epochs": 2, "log_every": 2, "device": "cpu",
                 "lr": {"default": 0.01, "models/small_cnn.py:small_cnn": 0.02}},
    "grid": [{"name": "mine", "models": ["models/small_cnn.py:small_cnn", "mlp_2x64", "resnet18"],
              "corruptions": ["random_labels"]}],
}
MODEL = "config/models/small_cnn.py"   # the README's example, found relative to the params file


def test_a_users_model_trains_through_snakemake_and_dvc_and_its_edits_rerun_only_its_runs(tmp_path):
    root = clone_project(tmp_path / "project")
    (root / "config/own-test.yaml").write_text(yaml.safe_dump(PARAMS))
    ids = sh("python -m rethinking runs --params config/own-test.yaml", root).stdout.split()
    mine = [r for r in ids if "/small_cnn-" in r]
    assert len(ids) == 3 and len(mine) == 1 and {"mlp_2x64", "resnet18"} <= {r.split("/")[2] for r in ids}

    sh("snakemake --cores 2 --configfile config/own-test.yaml", root)
    runs = pd.read_csv(root / "results/own/tables/runs.csv")
    assert set(runs["model"]) == {"models/small_cnn.py:small_cnn", "mlp_2x64", "resnet18"}
    assert runs.set_index("model").loc["models/small_cnn.py:small_cnn", "lr"] == 0.02
    assert runs.set_index("model").loc["resnet18", "parameters"] == 11_173_962 - 2 * 64 * 9
    for f in ("tables/table1.csv", "tables/convergence.csv", "figures/fig1a.png", "figures/fig1c.png"):
        assert (root / "results/own" / f).is_file(), f
    assert "Nothing to be done" in sh("snakemake -n --configfile config/own-test.yaml", root).stdout

    # editing the model file: exactly its runs are to be retrained (and the tables after them)
    (root / MODEL).write_text((root / MODEL).read_text() + "# edited\n")
    assert trained_runs(sh("snakemake -n --configfile config/own-test.yaml", root).stdout) == mine

    # DVC: the same grid; the model file is a dependency of its runs' stages alone
    sh("python -m rethinking dvc --params config/own-test.yaml", root)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert "${item.model}" in stages["train_user_model"]["do"]["deps"]
    assert {i["model"] for i in stages["train_user_model"]["foreach"].values()} == {MODEL}
    assert MODEL not in str(stages["train"])
    sh("dvc repro aggregate", root)   # every stage up to the tables (the figures are Snakemake's part above)
    dvc_runs = pd.read_csv(root / "results/own/tables/runs.csv")
    assert set(dvc_runs["model"]) == set(runs["model"])
    trains = lambda status: {s for s in status if s.startswith("train")}  # noqa: E731
    assert trains(json.loads(sh("dvc status --json", root).stdout)) == set()
    (root / MODEL).write_text((root / MODEL).read_text() + "# edited again\n")
    status = json.loads(sh("dvc status --json", root).stdout)
    assert trains(status) == {f"train_user_model@{r.replace('/', '__')}" for r in mine}, status
