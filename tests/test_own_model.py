"""A user's own model file end to end: config/tiny.yaml holds one (config/models/small_cnn.py), trained by the
session's Snakemake and DVC runs (conftest); its file is a dependency of exactly its runs, so an edit of it
reruns them alone (Snakemake: tests/test_pipeline.py::test_snakemake_reruns_only_what_an_edit_touches; DVC
here). Building and counting mlp_<d>x<w> and resnet18: tests/test_models.py."""

import json

import pandas as pd
import pytest
import yaml

from conftest import copy_of
from test_pipeline import TINY_RESULTS, USER_MODEL, expected_runs, sh

MODEL = "config/models/small_cnn.py"  # the README's example, found relative to the params file


@pytest.mark.slow
def test_dvc_reruns_exactly_the_runs_of_an_edited_model_file(tiny_dvc, tmp_path):
    mine = [r for r in expected_runs("config/tiny.yaml") if "/small_cnn-" in r]
    assert len(mine) == 1
    runs = pd.read_csv(tiny_dvc / TINY_RESULTS / "tables/runs.csv")
    assert USER_MODEL in set(runs["model"])
    stages = yaml.safe_load((tiny_dvc / "dvc.yaml").read_text())["stages"]
    assert "${item.model}" in stages["train_user_model"]["do"]["deps"]
    assert {i["model"] for i in stages["train_user_model"]["foreach"].values()} == {MODEL}
    assert MODEL not in str({k: v for k, v in stages.items() if k != "train_user_model"})
    root = copy_of(tiny_dvc, tmp_path / "copy")
    trains = lambda status: {s for s in status if s.startswith("train")}  # noqa: E731
    assert trains(json.loads(sh("dvc status --json", root).stdout)) == set()
    (root / MODEL).write_text((root / MODEL).read_text() + "# edited\n")
    status = json.loads(sh("dvc status --json", root).stdout)
    assert trains(status) == {f"train_user_model@{r.replace('/', '__')}" for r in mine}, status
