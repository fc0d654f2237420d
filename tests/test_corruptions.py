"""The registry of corruption kinds: stable seeds, the artifacts' bytes as recorded, and a kind added from outside."""

import json

import numpy as np
import pytest

from rethinking import plan as rc
from rethinking.data.corrupt import corrupt, corrupted_mask, load_corrupted
from rethinking.data.sources import prepare
from rethinking.files import load_npz
from rethinking.plan import corruptions
from rethinking.plan.packs import expected_cost

from conftest import REPO
from golden import artifact_digest

GOLDEN = json.loads((REPO / "tests" / "data" / "golden" / "tiny.json").read_text())["artifacts"]
# today's kinds and their seed keys: part of every artifact's seed, never to change
SEED_KEYS = {
    "true_labels": 0,
    "labels": 1,
    "shuffled_pixels": 2,
    "random_pixels": 3,
    "gaussian": 4,
    "pairflip": 5,
    "label_file": 6,
}


def _sha(path) -> str:
    return artifact_digest(path)


@pytest.fixture
def tiny_here(tmp_path, monkeypatch):
    """config/tiny.yaml with its results_dir as written (results/tiny, relative) in a fresh working directory:
    the layout the golden digests were recorded in (a label artifact stores its base's path as given, so
    the same relative path gives the same bytes, an absolute tmp path would not)."""
    monkeypatch.chdir(tmp_path)
    cfg = rc.load(REPO / "config" / "tiny.yaml")
    assert cfg["results_dir"] == "results/tiny"
    prepare(cfg)
    return cfg


def _artifacts(cfg, corruption_list) -> dict:
    data = rc.base_artifact(cfg).parent.parent
    paths = [rc.base_artifact(cfg)] + [corrupt(cfg, c) for c in corruption_list]
    return {p.relative_to(data).as_posix(): _sha(p) for p in paths}


def test_seed_keys_are_explicit_and_unchanged():
    assert {k.name: k.seed_key for k in corruptions.kinds()} == SEED_KEYS
    for name, key in SEED_KEYS.items():
        a = corruptions.rng(7, name, 0.4).random(4)
        np.testing.assert_array_equal(a, np.random.default_rng([7, 2, key, 400_000]).random(4))


def test_artifacts_are_byte_identical_to_the_recorded_ones(tiny_here):
    """Every artifact of config/tiny.yaml holds the arrays recorded before the registry (their digest:
    tests/golden.py), and the base artifact each training image's origin (digits: its index in load_digits)."""
    got = _artifacts(tiny_here, rc.corruptions_of(rc.expand_runs(tiny_here)))
    assert got == GOLDEN
    _, base = load_npz(rc.base_artifact(tiny_here))
    from sklearn.datasets import load_digits

    images = np.rint(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
    np.testing.assert_array_equal(images[base["origin_train"]][:, None], base["x_train"])


@pytest.mark.parametrize(
    "kind, message",
    [
        (corruptions.CorruptionKind("gaussian", 50, "pixels", lambda *a: {}), "'gaussian' is registered already"),
        (
            corruptions.CorruptionKind(
                "flip", 50, "labels", lambda *a: {}, levels=True, aliases={"random_labels": 1.0}
            ),
            "'random_labels' is registered already",
        ),
        (corruptions.CorruptionKind("flip", 3, "labels", lambda *a: {}), "seed_key 3 is 'random_pixels''s already"),
        (corruptions.CorruptionKind("flip", True, "labels", lambda *a: {}), "not a non-negative integer"),
        (corruptions.CorruptionKind("flip-it", 50, "labels", lambda *a: {}), "'flip-it' is not a name"),
        (corruptions.CorruptionKind("flip", 50, "images", lambda *a: {}), "not 'labels' or 'pixels'"),
    ],
)
def test_a_name_or_seed_key_twice_is_refused(kind, message):
    before = corruptions.kinds()
    with pytest.raises(rc.ConfigError, match=message):
        corruptions.register(kind)
    assert corruptions.kinds() == before


def _next_label(rng, base, level, num_classes):
    return {"y_train": (np.asarray(base["y_train"]) + 1) % num_classes}


def _inverted(rng, base, level, num_classes):
    return {"x_train": 255 - base["x_train"], "x_test": 255 - base["x_test"]}


@pytest.fixture
def toy_kinds():
    """Two kinds registered from outside the package, unregistered afterwards."""
    key = max(k.seed_key for k in corruptions.kinds()) + 1
    added = [
        corruptions.register(
            corruptions.CorruptionKind("next_label", key, "labels", _next_label, epoch_factor=5.0, legend="next label")
        ),
        corruptions.register(corruptions.CorruptionKind("inverted_pixels", key + 1, "pixels", _inverted)),
    ]
    try:
        yield added
    finally:
        for kind in added:
            corruptions.unregister(kind.name)


def test_a_kind_added_from_outside_runs_through_the_stage(tiny_here, toy_kinds):
    raw = {
        "results_dir": "results/tiny",
        "dataset": {"source": "digits", "train_size": 100, "test_size": 50},
        "preprocess": {"crop": 7},
        "grid": [
            {
                "name": "toy",
                "models": ["mlp_1x512"],
                "corruptions": [
                    "true_labels",
                    "random_labels",
                    "shuffled_pixels",
                    "random_pixels",
                    "gaussian",
                    "next_label",
                    "inverted_pixels",
                    "labels",
                ],
                "levels": [0.5],
            }
        ],
    }
    cfg = rc.validate(raw)  # the schema takes the new names
    runs = rc.expand_runs(cfg)
    ids = [c.id for c in rc.corruptions_of(runs)]
    assert "next-label" in ids and "inverted-pixels" in ids
    got = _artifacts(cfg, rc.corruptions_of(runs))
    # the other kinds' bytes do not move when kinds are added
    assert {k: got[k] for k in GOLDEN} == GOLDEN

    c = rc.Corruption.make("next_label")
    assert rc.Corruption.parse(c.id) == c and c.label_level is None and not c.touches_pixels
    _, base = load_npz(rc.base_artifact(cfg))
    meta, arrays = load_npz(rc.corrupted_artifact(cfg, c))
    assert "x_train" not in arrays and meta["base"]["path"] == str(rc.base_artifact(cfg))
    np.testing.assert_array_equal(arrays["y_train"], (base["y_train"] + 1) % 10)
    np.testing.assert_array_equal(arrays["y_test"], base["y_test"])
    assert meta["labels_changed"] == 1.0
    _, loaded = load_corrupted(cfg, c)
    np.testing.assert_array_equal(loaded["x_train"], base["x_train"])
    assert corrupted_mask(loaded).all()
    run = next(r for r in runs if r.corruption == c)
    assert expected_cost(cfg, run) == 5.0 * expected_cost(
        cfg, next(r for r in runs if r.corruption.id == "true-labels")
    )

    p = rc.Corruption.make("inverted_pixels")
    assert p.touches_pixels and p.label_level is None
    _, inv = load_corrupted(cfg, p)
    np.testing.assert_array_equal(inv["x_test"], 255 - base["x_test"])
    np.testing.assert_array_equal(inv["y_train"], base["y_train"])
    assert not corrupted_mask(inv).any()


def test_streamed_datasets_take_the_new_label_kind_only(toy_kinds):
    raw = {
        "dataset": {"source": "imagenet", "root": "x"},
        "grid": [{"name": "g", "models": ["alexnet"], "corruptions": ["next_label", "inverted_pixels"]}],
    }
    with pytest.raises(rc.ConfigError, match=r"corruptions\[1\]: 'inverted_pixels' corrupts pixels.*next_label"):
        rc.validate(raw)


def test_a_removed_kind_is_unknown_again(toy_kinds):
    corruptions.unregister("next_label")
    raw = {"grid": [{"name": "g", "models": ["mlp_1x512"], "corruptions": ["next_label"]}]}
    with pytest.raises(
        rc.ConfigError,
        match=r"grid\[0\]\.corruptions\[0\].*allowed: true_labels, labels, "
        r"random_labels, shuffled_pixels, random_pixels, gaussian, pairflip, label_file, inverted",
    ):
        rc.validate(raw)
    with pytest.raises(rc.ConfigError, match="not a corruption id"):
        rc.Corruption.parse("next-label")


def test_a_draw_that_breaks_the_contract_is_refused(tiny_here):
    bad = corruptions.register(
        corruptions.CorruptionKind(
            "bad_pixels",
            max(k.seed_key for k in corruptions.kinds()) + 1,
            "pixels",
            lambda rng, base, level, k: {"x_train": base["x_train"][:, :, :2], "x_test": base["x_test"]},
        )
    )
    try:
        with pytest.raises(rc.ConfigError, match="bad_pixels.*x_train"):
            corrupt(tiny_here, rc.Corruption.make(bad.name))
    finally:
        corruptions.unregister(bad.name)


def test_one_epoch_on_a_new_kind(tiny_here, toy_kinds):
    """The engine trains on a new kind through its public train(cfg, run), with nothing else to edit."""
    from rethinking.engine.loop import train

    tiny_here["training"]["max_epochs"] = 1
    c = rc.Corruption.make("next_label")
    corrupt(tiny_here, c)
    run = rc.Run(rc.dataset_id(tiny_here), c, "mlp_1x512", "none", 0)
    out = train(tiny_here, run, log=lambda *_: None)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and out.as_posix().endswith("next-label/mlp_1x512/none/seed0")
