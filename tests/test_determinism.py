"""Determinism: the same --seed gives the same samples, the same evaluation and the same training loss curve;
a different seed gives different ones."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from cli_harness import run_cli

SMALL = ["model.max_len=16", "model.n_layers=1", "model.d_model=32", "model.n_heads=2", "train.max_steps=6",
         "train.batch_size=4", "train.log_every=1", "train.eval_every=3", "train.eval_batches=1", "train.threads=1",
         "model.dropout=0.1"]


@pytest.fixture(autouse=True)
def _restore_torch_state():
    n, rng = torch.get_num_threads(), torch.get_rng_state()
    yield
    torch.set_num_threads(n)
    torch.set_rng_state(rng)


def _run(argv) -> str:
    status, out, err = run_cli(argv)
    assert status == 0, err
    return out


def _train(out, seed, *extra):
    _run(["train", "--preset", "tiny", "--out", str(out), "--quiet", "--seed", str(seed), *SMALL, *extra])
    with open(out / "log.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in ("tokens_per_s", "elapsed_s")} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    n, rng = torch.get_num_threads(), torch.get_rng_state()
    logs = {name: _train(root / name, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1))}
    logs["ar"] = _train(root / "ar", 0, "--process", "ar")
    torch.set_num_threads(n)
    torch.set_rng_state(rng)
    return root, logs


def test_same_seed_same_loss_curve_different_seed_different(runs):
    _, logs = runs
    assert len(logs["a"]) == 6 + 1 + 1  # six training rows, validations at step 3 and at the end
    assert logs["a"] == logs["b"]
    losses = [r["loss"] for r in logs["a"] if r["split"] == "train"]
    assert losses != [r["loss"] for r in logs["c"] if r["split"] == "train"]
    assert len(set(losses)) > 1


def _samples(model_dir, seed, *extra) -> list[str]:
    out = _run(["sample", str(model_dir), "--json", "--n", "3", "--steps", "6", "--seed", str(seed), *extra])
    return json.loads(out)["samples"]


@pytest.mark.parametrize("model, extra", [
    ("a", []),
    ("a", ["--sampler", "cached"]),
    ("a", ["--sampler", "planned", "--planner", "random"]),
    ("a", ["--prompt", "And", "--length", "12"]),
    ("a", ["--length", "40"]),  # longer than the context: sliding blocks
    ("ar", []),
])
def test_same_seed_same_samples_different_seed_different(runs, model, extra):
    root, _ = runs
    first = _samples(root / model, 11, *extra)
    assert first == _samples(root / model, 11, *extra)
    assert first != _samples(root / model, 12, *extra)
    assert len(set(first)) == 3  # the three samples of one call differ from each other too


def test_same_seed_same_evaluation(runs):
    root, _ = runs

    def nll(seed):
        out = _run(["eval", str(root / "a"), "--json", "--max-blocks", "4", "--t-samples", "2", "--seed", str(seed)])
        return json.loads(out)["nll"]

    assert nll(3) == nll(3)
    assert nll(3) != nll(4)


def test_training_seed_changes_the_initial_weights(runs):
    from safetensors.torch import load_file

    root, _ = runs
    a, b, c = (load_file(str(root / k / "model" / "model.safetensors")) for k in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("ema", ["0.9", "0"])
def test_validation_does_not_perturb_training(tmp_path, ema):
    """Validating every step (own generator, RNG forked) leaves the training loss curve and weights unchanged."""
    from safetensors.torch import load_file

    often = _train(tmp_path / "often", 0, "train.eval_every=1", f"train.ema={ema}")
    never = _train(tmp_path / "never", 0, "train.eval_every=0", f"train.ema={ema}")
    assert [r for r in often if r["split"] == "train"] == [r for r in never if r["split"] == "train"]
    assert len(often) > len(never)
    a, b = (load_file(str(tmp_path / k / "model" / "model.safetensors")) for k in ("often", "never"))
    assert all(torch.equal(a[k], b[k]) for k in a)
