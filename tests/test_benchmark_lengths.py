"""benchmarks/lengths.py: the length histogram and its total-variation distance exactly, and --json's shape."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_lengths", ROOT / "benchmarks" / "lengths.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_histogram_bins_and_clamps_to_the_last_bin():
    h = _bench().histogram(torch.tensor([0, 3, 4, 7, 8, 50]), 4, 9)  # bins [0,4) [4,8) [8,9]; 50 -> last
    assert h.tolist() == [2 / 6, 2 / 6, 2 / 6]


def test_total_variation_exact_values():
    b = _bench()
    a = torch.tensor([1, 1, 5, 5])  # bins of 4: half in bin 0, half in bin 1
    assert b.total_variation(a, a.flip(0), 4, 11) == 0.0
    assert b.total_variation(a, torch.tensor([9, 9, 9]), 4, 11) == 1.0  # disjoint support
    assert b.total_variation(a, torch.tensor([1, 5, 5, 5]), 4, 11) == pytest.approx(0.25)  # |.5-.25| + |.5-.75| / 2
    assert b.total_variation(a, torch.tensor([2, 6, 6, 6]), 4, 11) == pytest.approx(0.25)  # only bins matter


@pytest.mark.slow
def test_json_rows_on_tiny_models():
    """--lines-only on tiny models trained for 3 steps: one JSON object, one row per arm with the fields."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lengths.py"), "--lines-only",
                           "--lines-steps", "3", "--n", "4", "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    obj = json.loads(proc.stdout)
    assert [(r["family"], r["padding"]) for r in obj["rows"]] == [("mdlm", "learn"), ("mdlm", "skip"), ("ar", "-")]
    for r in obj["rows"]:
        assert 0.0 <= r["tv"] <= 1.0 and r["bpc"] > 0 and r["n"] == 4 and r["n_held"] == 48
        assert 0 <= r["mean_length"] <= 79 and len(r["samples"]) == 3
        assert r["mean_held"] == pytest.approx(sum(len(x) for x in (ROOT / "tests/data/fixtures/lines.txt")
                                                   .read_text().splitlines() if x.strip()) / 48, abs=0.01)
