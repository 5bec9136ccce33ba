"""Every bad input gets exactly one line on stderr, no traceback and exit status 2 (table-driven), and random
option values and override strings never escape as an uncaught exception (hypothesis)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cli_harness import run_cli as _run

# small and fast: every valid combination trains in well under a second
FAST = ["model.max_len=16", "model.n_layers=1", "model.d_model=16", "model.n_heads=2", "train.max_steps=1",
        "train.batch_size=2", "train.eval_batches=1", "train.threads=1", "process.steps=4"]




def _assert_one_line(status, err, expected=()):
    assert status == 2, err
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    assert err.startswith("ddlm"), err
    for text in expected:
        assert text in err, (text, err)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A trained tiny model, damaged copies of it, and bad corpora."""
    root = tmp_path_factory.mktemp("bad")
    run = root / "run"
    status, _, err = _run(["train", "--preset", "tiny", "--out", str(run), "--quiet", *FAST])
    assert status == 0, err
    status, _, err = _run(["train", "--preset", "sudoku-tiny", "--out", str(root / "sudoku"), "--quiet",
                           "train.max_steps=1", "model.n_layers=1", "model.d_model=16", "train.batch_size=2"])
    assert status == 0, err
    (root / "bad.csv").write_text("puzzle,solution\n" + "." * 81 + "," + "1" * 81 + "\n123,456\n")
    model = run / "model"
    for name in ("fmt", "damaged", "truncated", "json", "notok"):
        shutil.copytree(model, root / name)
    cfg = json.loads((root / "fmt" / "config.json").read_text())
    cfg["ddlm_format"] = 99
    (root / "fmt" / "config.json").write_text(json.dumps(cfg))
    weights = bytearray((root / "damaged" / "model.safetensors").read_bytes())
    (root / "truncated" / "model.safetensors").write_bytes(bytes(weights[: len(weights) // 2]))
    weights[3] ^= 0xFF  # the header length: safetensors refuses the file
    (root / "damaged" / "model.safetensors").write_bytes(bytes(weights))
    (root / "json" / "config.json").write_text("{not json")
    (root / "notok" / "tokenizer.json").unlink()
    shutil.copytree(run, root / "edited")  # config.yaml edited to a model the checkpoint does not fit
    text = (root / "edited" / "config.yaml").read_text()
    assert "d_model: 16" in text
    (root / "edited" / "config.yaml").write_text(text.replace("d_model: 16", "d_model: 32"))
    (root / "empty.txt").write_text("  \n")
    (root / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (root / "latin1.txt").write_bytes("café au lait ".encode("latin-1") * 300)
    (root / "short.txt").write_text("hello world\n")
    (root / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 80)
    (root / "a_dir").mkdir()
    (root / "notrun").mkdir()
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "broken.yaml").write_text("model: {n_layers: [\n")
    (root / "latin1.yaml").write_bytes(b"model: {positions: caf\xe9}\n")
    return root


def _train(root, *args):
    return ["train", "--preset", "tiny", "--out", str(root / "out"), "--overwrite", "--quiet", *FAST, *args]


# (id, argv builder taking the env root, substrings the one line must contain)
CASES = [
    # corpora
    ("corpus-missing", lambda r: _train(r, "--data", str(r / "nope.txt")), ["no such corpus", "kjv"]),
    ("corpus-empty", lambda r: _train(r, "--data", str(r / "empty.txt")), ["is empty"]),
    ("corpus-binary", lambda r: _train(r, "--data", str(r / "binary.bin")), ["binary"]),
    ("corpus-not-utf8", lambda r: _train(r, "--data", str(r / "latin1.txt")), ["not valid UTF-8"]),
    ("corpus-directory", lambda r: _train(r, "--data", str(r / "a_dir")), ["is a directory"]),
    ("corpus-too-short", lambda r: _train(r, "--data", str(r / "short.txt")), ["too short"]),
    ("eval-corpus-missing", lambda r: ["eval", str(r / "run"), "--data", str(r / "nope.txt")], ["no such corpus"]),
    # names, with the valid ones listed
    ("unknown-preset", lambda r: ["train", "--preset", "nope"], ["unknown preset 'nope'", "tiny"]),
    ("unknown-process", lambda r: _train(r, "--process", "nope"), ["unknown process 'nope'", "mdlm", "ar"]),
    ("unknown-tokenizer", lambda r: _train(r, "--tokenizer", "nope"), ["invalid choice", "char"]),
    ("unknown-sampler", lambda r: ["sample", str(r / "run"), "--sampler", "nope"], ["invalid choice", "ancestral"]),
    ("unknown-planner", lambda r: ["sample", str(r / "run"), "--sampler", "planned", "--planner", "nope"],
     ["unknown planner 'nope'", "top_margin"]),
    ("planner-without-planned", lambda r: ["sample", str(r / "run"), "--planner", "top_prob"],
     ["--sampler planned"]),
    ("sampler-not-of-family", lambda r: ["sample", str(r / "run"), "--sampler", "routing"], ["ancestral"]),
    ("unknown-schedule", lambda r: _train(r, "process.schedule=nope"), ["loglinear"]),
    ("unknown-command", lambda r: ["nope"], ["invalid choice", "train"]),
    # prompts
    ("prompt-unknown-chars", lambda r: ["sample", str(r / "run"), "--prompt", "\u2603 snow"],
     ["not in the vocabulary", "'\u2603'"]),
    ("prompt-too-long", lambda r: ["sample", str(r / "run"), "--prompt", "abc" * 10, "--length", "8"],
     ["30 tokens", "length is 8"]),
    # numbers
    ("steps-zero", lambda r: ["sample", str(r / "run"), "--steps", "0"], ["--steps", "positive"]),
    ("steps-negative", lambda r: ["sample", str(r / "run"), "--steps", "-2"], ["--steps", "positive"]),
    ("length-zero", lambda r: ["sample", str(r / "run"), "--length", "0"], ["--length", "positive"]),
    ("n-zero", lambda r: ["sample", str(r / "run"), "--n", "0"], ["--n", "positive"]),
    ("n-not-a-number", lambda r: ["sample", str(r / "run"), "--n", "four"], ["--n", "'four'"]),
    ("temperature-negative", lambda r: ["sample", str(r / "run"), "--temperature", "-1"], ["temperature", "[0, 100]"]),
    ("temperature-huge", lambda r: ["sample", str(r / "run"), "--temperature", "1000"], ["[0, 100]"]),
    ("temperature-nan", lambda r: ["sample", str(r / "run"), "--temperature", "nan"], ["finite"]),
    ("seed-too-big", lambda r: ["sample", str(r / "run"), "--seed", str(10**20)], ["--seed"]),
    ("max-steps-zero", lambda r: _train(r, "--max-steps", "0"), ["--max-steps", "positive"]),
    ("batch-size-negative", lambda r: _train(r, "--batch-size", "-4"), ["--batch-size", "positive"]),
    ("eval-batch-size-zero", lambda r: ["eval", str(r / "run"), "--batch-size", "0"], ["positive"]),
    # overrides
    ("override-unknown-field", lambda r: _train(r, "train.nope=1"), ["unknown field 'nope'", "max_steps"]),
    ("override-unknown-section", lambda r: _train(r, "nope.x=1"), ["unknown config section 'nope'"]),
    ("override-malformed", lambda r: _train(r, "max_steps"), ["section.field=value"]),
    ("override-wrong-type", lambda r: _train(r, "train.batch_size=abc"), ["must be an integer", "'abc'"]),
    ("override-bool", lambda r: _train(r, "train.compile=maybe"), ["true or false"]),
    ("override-zero-length", lambda r: _train(r, "model.max_len=0"), ["model.max_len must be positive"]),
    ("override-negative-batch", lambda r: _train(r, "train.batch_size=-2"), ["train.batch_size must be positive"]),
    ("override-negative-lr", lambda r: _train(r, "train.lr=-0.1"), ["train.lr"]),
    ("override-nan-lr", lambda r: _train(r, "train.lr=.nan"), ["train.lr"]),
    ("override-negative-seed", lambda r: _train(r, "train.seed=-1"), ["train.seed"]),
    ("override-beta2", lambda r: _train(r, "train.beta2=2"), ["train.beta2", "[0.0, 1.0)"]),
    ("override-weight-decay", lambda r: _train(r, "train.weight_decay=-1"), ["train.weight_decay"]),
    ("override-min-lr-ratio", lambda r: _train(r, "train.min_lr_ratio=-1"), ["train.min_lr_ratio"]),
    ("override-grad-clip", lambda r: _train(r, "train.grad_clip=-1"), ["train.grad_clip"]),
    ("override-mlp-ratio", lambda r: _train(r, "model.mlp_ratio=0"), ["model.mlp_ratio"]),
    ("override-eval-batches", lambda r: _train(r, "train.eval_batches=0"), ["train.eval_batches"]),
    ("override-sample-steps", lambda r: _train(r, "sample.steps=0"), ["sample.steps"]),
    ("override-heads", lambda r: _train(r, "model.n_heads=3"), ["divisible"]),
    ("override-grid", lambda r: _train(r, "model.positions=grid", "model.grid=[9]"), ["model.grid"]),
    ("override-val-fraction", lambda r: _train(r, "data.val_fraction=0.9"), ["data.val_fraction"]),
    ("resume-with-overrides", lambda r: ["train", "--resume", str(r / "run"), "train.lr=1"], ["--resume"]),
    ("resume-with-batch-size", lambda r: ["train", "--resume", str(r / "run"), "--batch-size", "9"],
     ["--batch-size", "config.yaml"]),  # --max-steps may extend a run (tests/test_resume.py)
    # preset files
    ("preset-not-a-mapping", lambda r: ["train", "--preset", str(r / "list.yaml")], ["YAML mapping"]),
    ("preset-bad-yaml", lambda r: ["train", "--preset", str(r / "broken.yaml")], ["not valid YAML", "line 2"]),
    ("preset-not-utf8", lambda r: ["train", "--preset", str(r / "latin1.yaml")], ["UTF-8"]),
    # run and model directories
    ("resume-not-a-run", lambda r: ["train", "--resume", str(r / "notrun")], ["not a run directory"]),
    ("resume-missing", lambda r: ["train", "--resume", str(r / "nope")], ["not a run directory"]),
    ("resume-a-file", lambda r: ["train", "--resume", str(r / "short.txt")], ["not a run directory"]),
    ("out-is-a-file", lambda r: _train(r)[:4] + [str(r / "short.txt")] + _train(r)[5:], ["is a file"]),
    ("out-under-a-file", lambda r: _train(r)[:4] + [str(r / "short.txt" / "x")] + _train(r)[5:],
     ["cannot create run directory"]),
    ("resume-config-edited", lambda r: ["train", "--resume", str(r / "edited"), "--quiet"],
     ["does not fit", "config.yaml", "model.d_model: 16 (checkpoint) vs 32 (config.yaml)"]),
    ("out-not-empty", lambda r: ["train", "--preset", "tiny", "--out", str(r / "run"), "--quiet"],
     ["not empty", "--resume", "--overwrite"]),
    ("sample-not-a-model", lambda r: ["sample", str(r / "notrun")], ["not a ddlm model directory"]),
    ("sample-missing", lambda r: ["sample", str(r / "nope")], ["does not exist"]),
    ("eval-not-a-model", lambda r: ["eval", str(r / "a_dir")], ["not a ddlm model directory"]),
    ("model-incompatible-version", lambda r: ["sample", str(r / "fmt")], ["incompatible ddlm version", "99"]),
    ("model-damaged-weights", lambda r: ["sample", str(r / "damaged")], ["model.safetensors", "damaged"]),
    ("model-truncated-weights", lambda r: ["sample", str(r / "truncated")], ["model.safetensors", "damaged"]),
    ("model-bad-config-json", lambda r: ["sample", str(r / "json")], ["not valid JSON"]),
    ("model-no-tokenizer", lambda r: ["sample", str(r / "notok")], ["tokenizer.json"]),
    # Sudoku strings (`ddlm sudoku solve`; the string is parsed before any model is loaded)
    ("sudoku-length", lambda r: ["sudoku", "solve", "123"], ["3 cells", "81"]),
    ("sudoku-characters", lambda r: ["sudoku", "solve", "x" * 81], ["'x'"]),
    ("sudoku-contradiction", lambda r: ["sudoku", "solve", "11" + "." * 79], ["contradict"]),
    ("sudoku-csv-bad-line", lambda r: ["eval", str(r / "sudoku"), "--task", "sudoku", "--data", str(r / "bad.csv")],
     ["bad.csv, line 3"]),
    ("sudoku-csv-missing", lambda r: ["eval", str(r / "sudoku"), "--task", "sudoku", "--data", str(r / "no.csv")],
     ["no.csv"]),
    ("sudoku-unknown-planner", lambda r: ["sudoku", "solve", "." * 81, "--model", str(r / "sudoku"), "--planner",
                                          "nope"], ["unknown planner 'nope'", "top_margin"]),
    ("sudoku-board-extra-characters", lambda r: ["sudoku", "solve", "[1]" + "." * 80], ["'['", "ignored"]),
    ("sudoku-threads-zero", lambda r: ["sudoku", "solve", "." * 81, "--threads", "0"], ["--threads", "positive"]),
    ("sudoku-generate-few-givens", lambda r: ["sudoku", "generate", "--n", "2", "--givens", "10"], ["17..81"]),
    ("sudoku-generate-out-exists", lambda r: ["sudoku", "generate", "--n", "2", "--givens", "30", "--out",
                                              str(r / "short.txt")], ["already exists", "--force"]),
    ("sudoku-generate-seed-negative", lambda r: ["sudoku", "generate", "--n", "2", "--givens", "30", "--seed", "-1"],
     ["--seed", ">= 0"]),
    ("sudoku-generate-n-huge", lambda r: ["sudoku", "generate", "--n", str(10**9), "--givens", "30"],
     ["--n", "hours"]),
    ("sudoku-generate-n-zero", lambda r: ["sudoku", "generate", "--n", "0", "--givens", "30"], ["--n", "positive"]),
    ("sudoku-not-a-sudoku-model", lambda r: ["sudoku", "solve", "." * 81, "--model", str(r / "run")],
     ["not a Sudoku model"]),
]


@pytest.mark.parametrize("argv, expected", [pytest.param(a, e, id=i) for i, a, e in CASES])
def test_bad_input_is_one_line_and_exit_2(env, argv, expected):
    status, _, err = _run(argv(env))
    _assert_one_line(status, err, expected)


def test_overrides_may_follow_options(env):
    status, out, err = _run(["train", "--preset", "tiny", "--out", str(env / "late"), *FAST[:3], "--quiet",
                             *FAST[3:], "train.seed=5"])
    assert status == 0, err
    assert "seed: 5" in (env / "late" / "config.yaml").read_text()


@pytest.mark.slow
def test_bad_input_through_a_real_process(env):
    argv = ["train", "--preset", "tiny", "--out", str(env / "sub"), "--data", str(env / "binary.bin")]
    p = subprocess.run([sys.executable, "-m", "ddlm", *argv], capture_output=True, text=True, timeout=120)
    _assert_one_line(p.returncode, p.stderr, ["binary"])
    assert p.stdout == ""


# ---- property tests ---------------------------------------------------------------------------------------
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_values = st.one_of(st.integers(-3, 40).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                    st.text(max_size=12), st.sampled_from(["", "-1", "0", "1e-3", "nan", "inf", "--help"]))


def _assert_clean(status, err):
    assert status in (0, 2), (status, err)
    assert "Traceback" not in err
    if status == 2:
        assert err.count("\n") == 1 and err.startswith("ddlm"), repr(err)


@pytest.mark.slow
@FUZZ
@example(opts={"--prompt": "--help"})  # "--help" as a value: a prompt like any other
@example(opts={"--n": "--help"})
@given(opts=st.dictionaries(st.sampled_from(["--n", "--length", "--steps", "--temperature", "--prompt", "--seed",
                                             "--sampler", "--planner"]), _values, max_size=4))
def test_random_sample_options_never_raise(env, opts):
    argv = ["sample", str(env / "run"), "--json"]
    if "--steps" not in opts:
        argv += ["--steps", "4"]
    for k, v in opts.items():
        argv.append(f"{k}={v}")  # `--k=v` keeps values such as "-1" or "--help" attached to their option
    status, out, err = _run(argv)
    _assert_clean(status, err)
    if status == 0:  # a value "--help" stays a value (`--k=v`): a run prints samples, never the usage text
        assert json.loads(out)["samples"] and "usage:" not in out


_field = st.sampled_from(["model.n_layers", "model.d_model", "model.n_heads", "model.mlp_ratio", "model.dropout",
                          "model.max_len", "model.positions", "model.grid", "model.time_conditioning",
                          "process.name", "process.schedule", "process.t_sampling", "process.discrete_steps",
                          "process.t_eps", "process.loss_weighting", "data.tokenizer", "data.val_fraction",
                          "train.lr", "train.warmup_steps", "train.grad_clip", "train.ema", "train.grad_accum",
                          "train.min_lr_ratio", "train.beta2", "train.log_every", "train.seed", "sample.steps",
                          "sample.temperature", "nope.x", "train.nope"])
_yaml_value = st.one_of(_values, st.sampled_from(["[9, 9]", "[]", "{a: 1}", "true", "null", "ar", "grid", "bpe",
                                                  "mdlm", "cosine", "1.0e+9", "0.5", "[1, 2, 3]"]))


@pytest.mark.slow
@FUZZ
@given(overrides=st.lists(st.one_of(st.tuples(_field, _yaml_value).map("=".join), st.text(max_size=20)),
                          max_size=3))
@example(overrides=["train.log_every=0"])  # found by this test: 0 (= only the last step) divided by zero
def test_random_train_overrides_never_raise(env, overrides):
    # the fixed small settings come last, so a random value can never make training slow
    argv = ["train", "--preset", "tiny", "--out", str(env / "fuzz"), "--overwrite", "--quiet",
            "--data", str(env / "corpus.txt"), *overrides, *FAST]
    status, _, err = _run(argv)
    _assert_clean(status, err)


@pytest.mark.parametrize("threshold", [0, 1.5, -1, float("nan"), "high"])
def test_confidence_threshold_out_of_range_is_a_user_error(threshold):
    from ddlm.errors import UserError
    from ddlm.sampling.planners import get_planner

    with pytest.raises(UserError, match="threshold"):
        get_planner("confidence", threshold=threshold)
