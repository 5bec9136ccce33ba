"""`ddlm plot`: the curves drawn are the log's numbers, and no file ddlm did not write is replaced."""

import math

import pytest

from cli_harness import run_cli

pytest.importorskip("matplotlib", reason="ddlm plot needs the optional extra: pip install matplotlib")

from ddlm.plot import draw, is_ddlm_png, read_log  # noqa: E402

HEADER = "step,split,loss,nelbo,masked_ce,bpc,lr,grad_norm,tokens_per_s,elapsed_s\n"


def _run(tmp_path, name, rows):
    d = tmp_path / name
    d.mkdir()
    (d / "log.csv").write_text(HEADER + "".join(rows))
    return d


def _two_runs(tmp_path):
    a = _run(tmp_path, "a", ["1,train,3.5,,,,0.001,1.0,100,0.5\n", "2,train,3.0,,,,0.002,1.0,100,1.0\n",
                             "2,val,,2.9,,4.18,,,,\n"])
    b = _run(tmp_path, "b", ["1,train,4.0,,,,0.001,1.0,100,0.5\n", "2,val,,3.1,,4.47,,,,\n"])
    return a, b


def test_read_log_splits_rows_and_keeps_empty_cells_as_nan(tmp_path):
    a, _ = _two_runs(tmp_path)
    log = read_log(a)
    assert log["train"]["step"] == [1.0, 2.0] and log["train"]["loss"] == [3.5, 3.0]
    assert log["val"]["step"] == [2.0] and log["val"]["bpc"] == [4.18]
    assert math.isnan(log["val"]["loss"][0])


def test_each_panel_draws_each_runs_numbers(tmp_path):
    a, b = _two_runs(tmp_path)
    fig = draw([a, b], ["first", "second"])
    loss, val, lr = fig.axes
    assert [list(line.get_ydata()) for line in loss.lines] == [[3.5, 3.0], [4.0]]
    assert [list(line.get_xdata()) for line in val.lines] == [[2.0], [2.0]]
    assert [list(line.get_ydata()) for line in val.lines] == [[4.18], [4.47]]
    assert list(lr.lines[0].get_ydata()) == [0.001, 0.002]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["first", "second"]


@pytest.mark.slow
def test_cli_writes_a_tagged_png_and_replaces_only_its_own(tmp_path):
    a, b = _two_runs(tmp_path)
    status, out, _ = run_cli(["plot", str(a)])
    png = a / "curves.png"
    assert status == 0 and str(png) in out
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and is_ddlm_png(png)
    assert run_cli(["plot", str(a)])[0] == 0  # its own plot is replaced
    foreign = tmp_path / "mine.png"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)  # a PNG somebody else wrote
    status, _, err = run_cli(["plot", str(a), str(b), "--out", str(foreign)])
    assert status == 2 and "not written by ddlm plot" in err and len(err.strip().splitlines()) == 1
    assert foreign.read_bytes() == b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.mark.parametrize("argv, message", [
    (["plot", "{tmp}/missing"], "has no log.csv"),
    (["plot", "{a}", "{b}"], "name it with --out"),
    (["plot", "{a}", "--out", "{tmp}/x.jpg"], "must name a .png"),
    (["plot", "{a}", "--labels", "x,y"], "got 2 for 1 run"),
])
def test_bad_input_is_one_line(tmp_path, argv, message):
    a, b = _two_runs(tmp_path)
    argv = [x.format(tmp=tmp_path, a=a, b=b) for x in argv]
    status, _, err = run_cli(argv)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
