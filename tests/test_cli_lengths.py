"""`ddlm sample --max-length N` (samples of their own lengths, --json reports them) and `--infill TEXT
--span-lengths LO:HI` through the CLI, on saved models with and without <eos>."""

import json

import pytest

from cli_harness import run_cli
from ddlm.config import apply_overrides, load_preset
from ddlm.data.tokenizers import CharTokenizer
from ddlm.pipeline import SequenceModel


def _saved(tmp_path, specials: bool, name: str):
    model = SequenceModel(apply_overrides(load_preset("tiny"), ["model.max_len=16"]),
                          CharTokenizer("ab .", specials=specials))
    model.save_pretrained(tmp_path / name)
    return str(tmp_path / name)


def test_max_length_json_reports_each_samples_length(tmp_path):
    status, out, err = run_cli(["sample", _saved(tmp_path, True, "rec"), "--max-length", "12", "--n", "6",
                                "--seed", "0", "--json"])
    assert status == 0, err
    obj = json.loads(out)
    assert len(obj["lengths"]) == len(obj["samples"]) == 6
    for text, n in zip(obj["samples"], obj["lengths"]):
        assert n["chars"] == len(text) == n["tokens"] <= 12  # one character per token; specials are nothing
        assert "<" not in text


def test_max_length_without_json_prints_samples_and_the_window(tmp_path):
    status, out, _ = run_cli(["sample", _saved(tmp_path, True, "rec"), "--max-length", "12", "--n", "2",
                              "--seed", "0"])
    assert status == 0 and "--- sample 2 ---" in out and "at most 12 tokens" in out


@pytest.mark.parametrize("argv,message", [
    (["--max-length", "8"], "--records"), (["--infill", "a[MASK]"], "--records"),
    (["--span-lengths", "1:3"], "add --infill"),
])
def test_one_line_errors_exit_2(tmp_path, argv, message):
    status, out, err = run_cli(["sample", _saved(tmp_path, False, "stream"), *argv])
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_max_length_zero_is_refused(tmp_path):
    status, _, err = run_cli(["sample", _saved(tmp_path, True, "rec"), "--max-length", "0"])
    assert status == 2 and "--max-length" in err


def test_infill_keeps_the_text_and_reports_the_span_length(tmp_path):
    d = _saved(tmp_path, True, "rec")
    status, out, err = run_cli(["sample", d, "--infill", "a[MASK]b", "--span-lengths", "2:4", "--n", "3",
                                "--seed", "1", "--json"])
    assert status == 0, err
    obj = json.loads(out)
    for text, k, n in zip(obj["samples"], obj["span_lengths"], obj["lengths"]):
        assert 2 <= k <= 4 and text[0] == "a" and n["tokens"] == k + 2
    status, out, _ = run_cli(["sample", d, "--infill", "a[MASK:3]b", "--n", "1", "--seed", "1"])
    assert status == 0 and "--- sample 1 ---" in out and "NFE" in out
