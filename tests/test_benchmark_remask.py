"""benchmarks/sampling.py --remask: the row set reaches the ReMDM sampler with its options, uncapped steps."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _module(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class CharJudge:
    """A deterministic stand-in judge: NLL = sum of the character codes / 100, one judge token per character."""

    name = "chars"

    def nll(self, texts):
        return [(sum(map(ord, t)) / 100, len(t)) for t in texts]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return _module("sampling").load(None)


def test_eta_zero_is_ancestral_token_for_token_and_steps_are_not_capped(model):
    rr = _module("sampling_remask")
    schedules = ["cap", "rescale", "conf"]
    rows = rr.remask_rows(model, [CharJudge()], 3, 8, [16], schedules, rr.parse_etas("0", schedules), seed=3)
    anc = rows[0]
    assert [r["sampler"] for r in rows] == ["ancestral", "remask", "remask", "remask"]
    for r in rows:
        assert r["nfe"] == 16  # 16 steps for 8 positions: generate() would have cut them to 8
    for r in rows[1:]:  # sigma = 0 draws with the ancestral step's uniforms: the same samples
        assert r["judge_nll"] == anc["judge_nll"] and r["entropy"] == anc["entropy"]
    loud = rr.remask_rows(model, [CharJudge()], 3, 8, [16], ["rescale"], {"rescale": 1.0}, seed=3)[1]
    assert loud["judge_nll"] != anc["judge_nll"]  # eta reaches the sampler: full re-masking changes the samples


def test_parse_etas_defaults_one_number_and_per_schedule():
    rr = _module("sampling_remask")
    assert rr.parse_etas("", ["cap", "loop"]) == {"cap": 0.008, "loop": 0.02}
    assert rr.parse_etas("0.1", ["cap", "conf"]) == {"cap": 0.1, "conf": 0.1}
    assert rr.parse_etas("loop=0.05", ["cap", "loop"]) == {"cap": 0.008, "loop": 0.05}


@pytest.mark.parametrize("bad", [["--remask-eta", "cap=2"], ["--remask-eta", "foo=0.1"],
                                 ["--remask-schedules", "cap,nope"], ["--remask-steps", "128,x"],
                                 ["--samples", "0"]])
def test_bad_remask_options_exit_2(bad, capsys):
    with pytest.raises(SystemExit) as e:
        _module("sampling").main(["--remask-only", *bad])
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_remask_only_json_has_one_row_per_sampler_and_steps(capsys):
    torch.set_num_threads(1)
    _module("sampling").main(["--remask-only", "--json", "--samples", "2", "--length", "8", "--remask-steps", "4,8",
                              "--remask-schedules", "cap,loop"])
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"machine", "remask"}  # no other table ran
    r = out["remask"]
    assert (r["n"], r["length"], r["judges"]) == (2, 8, [])
    assert [(x["sampler"], x["schedule"], x["steps"]) for x in r["rows"]] == [
        (s, k, t) for t in (4, 8) for s, k in [("ancestral", None), ("remask", "cap"), ("remask", "loop")]]
    assert [x["eta"] for x in r["rows"][:3]] == [None, 0.008, 0.02]
