"""`ddlm sudoku generate`, the shipped example CSV (eval's and the benchmark's default), and what `ddlm sudoku
solve` reads and prints: exact answers from oracle denoisers and known boards."""

import json

import numpy as np
import pytest
import torch

from ddlm.cli import main
from ddlm.config import load_preset
from ddlm.tasks.sudoku.board import format_board, load_csv
from ddlm.tasks.sudoku.generate import random_grids
from ddlm.data.tokenizers import CharTokenizer
from ddlm.pipeline import SequenceModel
from test_sudoku_task import REPO, _oracle_model, _patch_model, _puzzles, _write_csv


# ---- `ddlm sudoku generate`, the shipped example, `sudoku solve` input and output -------------------------------
def test_generate_writes_unique_puzzles_and_never_replaces_a_file_unasked(tmp_path, capsys):
    from ddlm.tasks.sudoku.generate import solve

    out = tmp_path / "sub" / "p.csv"
    assert main(["sudoku", "generate", "--n", "3", "--givens", "30", "--seed", "1", "--out", str(out)]) == 0
    assert f"wrote 3 puzzles with 30 givens (seed 1) to {out}" in capsys.readouterr().err
    P, S = load_csv(out)
    assert P.shape == (3, 81) and ((P != 0).sum(1) == 30).all()
    for p, g in zip(P, S):
        (only,) = solve(p, limit=2)  # exactly one solution, the stored one
        assert (only == g).all()
    written = out.read_text()
    assert main(["sudoku", "generate", "--n", "3", "--givens", "30", "--seed", "1"]) == 0  # no --out: stdout
    assert capsys.readouterr().out == written
    mine = tmp_path / "notes.csv"
    mine.write_text("my own notes\n")
    assert main(["sudoku", "generate", "--n", "2", "--givens", "30", "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and err.count("\n") == 1
    assert mine.read_text() == "my own notes\n"
    assert main(["sudoku", "generate", "--n", "2", "--givens", "30", "--out", str(mine), "--force", "--quiet"]) == 0
    assert len(load_csv(mine)[0]) == 2 and capsys.readouterr().err == ""
    assert main(["sudoku", "generate", "--n", "2", "--givens", "16"]) == 2
    assert "17..81" in capsys.readouterr().err
    assert main(["sudoku", "generate", "--n", "2", "--givens", "30", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_shipped_example_is_package_data_and_what_generate_writes(capsys):
    import fnmatch
    tomllib = pytest.importorskip("tomllib")
    from ddlm.tasks.sudoku.board import EXAMPLE_CSV

    assert main(["sudoku", "generate", "--n", "20", "--givens", "28", "--seed", "0", "--quiet"]) == 0
    assert capsys.readouterr().out == EXAMPLE_CSV.read_text()  # the command its comment names
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ddlm"]
    rel = EXAMPLE_CSV.relative_to(REPO / "src" / "ddlm").as_posix()
    assert any(fnmatch.fnmatch(rel, g) for g in globs), (rel, globs)  # installed with the package


def _tiny_sudoku_model(tmp_path):
    model_dir = tmp_path / "m"
    SequenceModel(load_preset("sudoku-tiny"), CharTokenizer("123456789")).save_pretrained(model_dir)
    return model_dir


def test_eval_without_data_uses_the_shipped_example(tmp_path, capsys):
    from ddlm.tasks.sudoku.board import EXAMPLE_CSV

    model_dir = _tiny_sudoku_model(tmp_path)
    assert main(["eval", str(model_dir), "--task", "sudoku", "--json", "--planner", "random"]) == 0
    m = json.loads(capsys.readouterr().out)
    P, _ = load_csv(EXAMPLE_CSV)
    assert m["data"] == str(EXAMPLE_CSV) and m["n"] == 20 == len(P)
    assert m["row_evals"] == (P == 0).sum() == 20 * (81 - 28)  # one evaluation per blank, an integer
    assert type(m["n"]) is int and type(m["solved"]) is int and type(m["nfe_total"]) is int


def test_eval_threads_option_is_honoured(tmp_path, capsys):
    import argparse

    from ddlm.eval import TASKS

    model = SequenceModel.from_pretrained(_tiny_sudoku_model(tmp_path))
    puzzles, grids = _puzzles(1, 78, 15)  # three blanks: little work
    path = _write_csv(tmp_path / "p.csv", puzzles, grids)
    args = argparse.Namespace(data=str(path), planner="random", limit=None, steps=None, json=True, threads=2)
    assert TASKS["sudoku"](model, args) == 0 and torch.get_num_threads() == 2
    assert json.loads(capsys.readouterr().out)["row_evals"] == 3


def test_solve_reads_spaced_and_nine_line_boards_and_threads(monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # which would otherwise set the default
    (puzzle,), (grid,) = _puzzles(1, 60, 13)
    _patch_model(monkeypatch, _oracle_model(grid))
    text = format_board(puzzle, pretty=False)
    rows = [text[9 * r: 9 * r + 9] for r in range(9)]
    for argv in (rows, ["\n".join(rows) + "\n"], [format_board(puzzle)], [" ".join(text)]):
        assert main(["sudoku", "solve", *argv, "--json"]) == 0, argv
        res = json.loads(capsys.readouterr().out)
        assert res["board"] == format_board(grid, pretty=False) and res["broken_cells"] == []
        assert res["nfe"] == 21 and type(res["nfe"]) is int  # one network call per blank
    assert main(["sudoku", "solve", text, "--threads", "2"]) == 0 and torch.get_num_threads() == 2
    assert main(["sudoku", "solve", text]) == 0
    assert torch.get_num_threads() == 1  # the default: one thread


def test_solve_marks_the_cells_that_break_a_rule(monkeypatch, capsys):
    from ddlm.tasks.sudoku.board import MARK_LEGEND

    (puzzle,), (grid,) = _puzzles(1, 30, 14)
    other = random_grids(2, 99)[1]  # the oracle answers another grid: around the givens, rules break
    _patch_model(monkeypatch, _oracle_model(other))
    board = np.where(puzzle > 0, puzzle, other)
    expected = [i for i in range(81) if board[i] and any(
        j != i and board[j] == board[i] and (j // 9 == i // 9 or j % 9 == i % 9 or
                                             (j // 27 == i // 27 and j % 9 // 3 == i % 9 // 3)) for j in range(81))]
    assert expected  # a board that breaks a rule
    text = format_board(puzzle, pretty=False)
    assert main(["sudoku", "solve", text, "--json"]) == 1
    res = json.loads(capsys.readouterr().out)
    assert res["solved"] is False and res["board"] == format_board(board, pretty=False)
    assert res["broken_cells"] == expected
    assert main(["sudoku", "solve", text]) == 1
    out = capsys.readouterr().out
    grid_lines = out.splitlines()[:11]
    marked = [i for i in range(81) if f"[{board[i]}]" in _cell_texts(grid_lines)[i]]
    assert marked == expected and MARK_LEGEND in out and f"{len(expected)} cells marked" in out


def _cell_texts(lines):
    """The 81 three-character cells of a marked board (rules and bars dropped)."""
    rows = [line.replace("|", "").ljust(27) for line in lines if not line.startswith("-")]
    return [rows[i // 9][3 * (i % 9): 3 * (i % 9) + 3] for i in range(81)]


def test_benchmark_defaults_to_the_shipped_example_with_integer_counts(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_sudoku", REPO / "benchmarks" / "sudoku.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model_dir = _tiny_sudoku_model(tmp_path)
    assert bench.main(["--model", str(model_dir), "--planners", "random", "--json", "--plot", "", "--limit", "5"]) == 0
    res = json.loads(capsys.readouterr().out)
    (row,) = res["rows"]
    assert row["set"] == "sudoku" and row["n"] == 5 and row["row_evals"] == 5 * (81 - 28)
    assert row["by_givens"] == {"28": [row["solved"], 5]}
    for key in ("n", "solved", "solved_first_try", "row_evals"):
        assert type(row[key]) is int, key


def test_readme_sudoku_commands_use_only_what_a_fresh_clone_has():
    import shlex

    from ddlm.cli import build_parser

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Sudoku and decoding orders"):]
    block = section[section.index("```bash") + 7: section.index("```", section.index("```bash") + 7)]
    written = set()
    for line in block.strip().splitlines():
        argv = shlex.split(line, comments=True)
        argv = [a for a in argv if not (a.startswith("[") or a.endswith("]"))]  # optional parts
        if argv[0] == "ddlm":
            build_parser().parse_args(argv[1:])  # every option exists (argparse exits otherwise)
        for opt, value in zip(argv, argv[1:]):
            if opt == "--out" and argv[:3] == ["ddlm", "sudoku", "generate"]:
                written.add(value)
            if opt == "--data":
                assert value in written or (REPO / value).exists(), line  # made by an earlier line or committed
        if argv[:2] == ["ddlm", "eval"]:
            assert (REPO / argv[2]).is_dir(), line
