"""benchmarks/sudoku.py --curve: the steps and minutes each arm needs to reach a solve rate, the kept
checkpoints, and the table read from snapshots of a real (tiny) run."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


curve = _module("sudoku_curve")

POINTS = {
    "uniform": [{"step": 100, "minutes": 2.0, "solve_rate": 0.10}, {"step": 300, "minutes": 6.5, "solve_rate": 0.55},
                {"step": 200, "minutes": 4.0, "solve_rate": 0.49}, {"step": 400, "minutes": 9.0, "solve_rate": 0.52}],
    "puma": [{"step": 100, "minutes": 2.1, "solve_rate": 0.50}, {"step": 200, "minutes": 4.2, "solve_rate": 0.69},
             {"step": 300, "minutes": 6.3, "solve_rate": 0.70}],
}


def test_reach_is_the_first_step_at_or_above_the_rate_in_step_order():
    assert curve.reach(POINTS["uniform"], 0.5) == {"step": 300, "minutes": 6.5}  # not the unsorted order
    assert curve.reach(POINTS["puma"], 0.5) == {"step": 100, "minutes": 2.1}  # exactly 50% counts
    assert curve.reach(POINTS["puma"], 0.7) == {"step": 300, "minutes": 6.3}
    assert curve.reach(POINTS["uniform"], 0.7) is None
    assert curve.reach([], 0.5) is None


def test_curve_table_rows_and_text():
    rows = curve.curve_table(POINTS)
    assert [r["arm"] for r in rows] == ["uniform", "puma"]
    assert rows[0]["reach"] == {"0.5": {"step": 300, "minutes": 6.5}, "0.7": None}
    assert rows[0]["final"] == {"step": 400, "minutes": 9.0, "solve_rate": 0.52}  # the last step, not the best
    assert rows[1]["final"]["solve_rate"] == 0.70
    text = curve.format_table(rows).splitlines()
    assert "to 50%" in text[0] and "to 70%" in text[0]
    assert text[1].split()[:4] == ["uniform", "300", "/", "6.5"] and text[1].split()[4] == "-"
    assert text[2].split()[:7] == ["puma", "100", "/", "2.1", "300", "/", "6.3"]
    assert text[2].rstrip().endswith("70.0%")


def test_keep_links_only_complete_checkpoints(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    (ck / "step-00000002.pt").write_bytes(b"a")
    (ck / "step-00000002.sha256").write_text("x")
    (ck / "step-00000004.pt").write_bytes(b"b")  # still being written: no checksum yet
    assert [p.name for p in curve.keep_once(tmp_path)] == ["step-00000002.pt"]
    (ck / "step-00000004.sha256").write_text("y")
    (ck / "step-00000002.pt").unlink()  # the run removes old checkpoints; the snapshot stays
    assert [p.name for p in curve.keep_once(tmp_path)] == ["step-00000004.pt"]
    assert curve.keep_once(tmp_path) == []
    assert [s for s, _ in curve.snapshots(tmp_path)] == [2, 4]
    assert (tmp_path / "snapshots" / "step-00000002.pt").read_bytes() == b"a"


@pytest.mark.slow
def test_curve_from_a_tiny_run(tmp_path, capsys):
    import ddlm
    from ddlm.tasks.sudoku.board import EXAMPLE_CSV

    out = tmp_path / "curve-tiny"
    cfg = ddlm.apply_overrides(ddlm.load_preset("sudoku-tiny"), ["train.max_steps=4", "train.ckpt_every=2"])
    ddlm.fit(cfg, out, progress=False)
    curve.keep_once(out)  # the run keeps its 2 newest: steps 2 and 4
    bench = _module("sudoku")
    capsys.readouterr()  # what training printed
    assert bench.main(["--curve", "--runs", str(out), "--data", str(EXAMPLE_CSV), "--limit", "4", "--json",
                       "--plot", ""]) == 0
    res = json.loads(capsys.readouterr().out)
    pts = res["curves"]["tiny"]
    assert [p["step"] for p in pts] == [2, 4] and all(p["n"] == 4 for p in pts)
    assert pts[0]["minutes"] < pts[1]["minutes"]
    assert res["rows"][0]["final"]["step"] == 4
    cache = json.loads((out / "snapshots" / "curve.json").read_text())
    assert len(cache) == 2  # a second call evaluates nothing new
    assert bench.main(["--curve", "--runs", str(tmp_path / "nope"), "--data", str(EXAMPLE_CSV)]) == 2
