"""Planner and sampler options (Gumbel coefficient, confidence threshold, commit schedule, ReMDM's options) from
`generate`, the config and the CLI (`--planner-option KEY=VALUE`), with the same tokens whichever way they come;
the cosine commit schedule against `unmask_counts`; internal misuse raises ValueError, not UserError."""

from __future__ import annotations

import json

import pytest
import torch

import ddlm
from ddlm.cli import main
from ddlm.errors import UserError
from ddlm.pipeline import SequenceModel
from ddlm.processes.masking import MaskingProcess
from ddlm.processes.schedules import LogLinear
from ddlm.sampling.core import Hooks
from ddlm.sampling.loop import planned_rule, sample_masked
from ddlm.sampling.planners import get_planner, planner_options_of, unmask_counts
from ddlm.toys import ToyDistribution

PLANNED = ["--sampler", "planned", "--planner", "top_margin"]


def _cli_samples(capsys, out, *extra, length=16, seed=3):
    code = main(["sample", str(out), "--n", "3", "--length", str(length), "--steps", "8", "--seed", str(seed),
                 "--json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)["samples"]


def _api_samples(model, seed=3, **kwargs):
    return model.generate(n=3, length=16, steps=8, seed=seed, **kwargs).texts


# --- generate and the CLI --------------------------------------------------------------------------------------


def test_gumbel_zero_is_no_option_and_gumbel_half_is_generate_with_it(tiny_run, capsys):
    out, _ = tiny_run
    model = SequenceModel.from_pretrained(out)
    plain = _cli_samples(capsys, out, *PLANNED)
    assert _cli_samples(capsys, out, *PLANNED, "--planner-option", "gumbel=0") == plain
    noisy = _cli_samples(capsys, out, *PLANNED, "--planner-option", "gumbel=0.5")
    api = _api_samples(model, sampler="planned", planner="top_margin", planner_options={"gumbel": 0.5})
    assert noisy == api
    assert noisy != plain  # the option reached the planner: noise on the margins changes the order
    assert _api_samples(model, sampler="planned", planner="top_margin") == plain


def test_remask_options_through_the_same_flag(tiny_run, capsys):
    out, _ = tiny_run
    model = SequenceModel.from_pretrained(out)
    cli = _cli_samples(capsys, out, "--sampler", "remask", "--sampler-option", "schedule=cap",
                       "--planner-option", "eta=0.05")
    api = _api_samples(model, sampler="remask", planner_options={"schedule": "cap", "eta": 0.05})
    assert cli == api
    assert cli != _api_samples(model, sampler="remask", planner_options={"schedule": "cap", "eta": 0.0})


def test_cosine_schedule_through_the_cli_is_generate_with_it(tiny_run, capsys):
    out, _ = tiny_run
    model = SequenceModel.from_pretrained(out)
    cosine = _cli_samples(capsys, out, *PLANNED, "--planner-option", "schedule=cosine")
    assert cosine == _api_samples(model, sampler="planned", planner="top_margin",
                                  planner_options={"schedule": "cosine"})
    assert cosine != _api_samples(model, sampler="planned", planner="top_margin")


@pytest.mark.parametrize("argv, says", [
    (["--sampler", "planned", "--planner", "top_margin", "--planner-option", "tau=1"],
     "planner top_margin does not take option 'tau'; its options: gumbel, schedule"),
    (["--sampler", "remask", "--planner-option", "gumbel=1"], "the remask sampler does not take option 'gumbel'"),
    (["--sampler", "planned", "--planner", "confidence", "--planner-option", "threshold"], "key=value"),
    (["--sampler", "planned", "--planner", "top_prob", "--planner-option", "schedule=sqrt"], "linear, cosine"),
    (["--sampler", "ancestral", "--planner-option", "gumbel=1"], "add --sampler planned or --sampler remask"),
])
def test_bad_options_exit_2_with_one_line(tiny_run, capsys, argv, says):
    out, _ = tiny_run
    assert main(["sample", str(out), "--n", "1", "--seed", "0", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddlm sample: error: ") and says in lines[0]


def test_eval_takes_the_option_only_for_gen_ppl(tiny_run, capsys):
    out, _ = tiny_run
    assert main(["eval", str(out), "--planner-option", "gumbel=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gen-ppl" in err[0]


def test_eval_gen_ppl_passes_the_options_to_generate(tiny_run, capsys, monkeypatch):
    """The judge is the tiny model itself (an AR judge is not needed to see the options arrive)."""
    from ddlm.eval import gen_ppl

    out, _ = tiny_run
    seen = {}
    monkeypatch.setattr(gen_ppl, "load_judge", lambda spec: "judge")

    def fake(model, judge, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop here: the arguments are what this test reads
    monkeypatch.setattr(gen_ppl, "generative_perplexity", fake)
    assert main(["eval", str(out), "--gen-ppl", "--sampler", "planned", "--planner", "entropy",
                 "--planner-option", "gumbel=0.25", "--planner-option", "schedule=cosine"]) == 130
    capsys.readouterr()
    assert seen["planner_options"] == {"gumbel": "0.25", "schedule": "cosine"}
    assert seen["sampler"] == "planned" and seen["planner"] == "entropy"


def test_help_lists_each_planners_options_from_the_registry(monkeypatch, capsys):
    from ddlm.sampling import planners

    class Shy(planners.Planner):
        name, options = "zz_shy", ("zz_knob",)
    monkeypatch.setitem(planners.PLANNERS, "zz_shy", Shy)
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "zz_shy: zz_knob, schedule" in text
    assert "top_margin: gumbel, schedule" in text and "confidence: threshold, schedule" in text
    assert "schedule, eta, t_on, t_off, alpha_on" in text  # the remask sampler's, from RemaskRule.options
    assert planner_options_of("rdm") == ("temperature", "schedule")


# --- the config ------------------------------------------------------------------------------------------------


def test_config_planner_options_apply_with_the_configs_planner(tiny_run):
    out, model = tiny_run
    cfg = ddlm.apply_overrides(model.cfg, ["sample.sampler=planned", "sample.planner=top_prob",
                                           "sample.planner_options={gumbel: 0.5}"])
    assert cfg.sample.planner_options == {"gumbel": 0.5}
    configured = SequenceModel(cfg, model.tokenizer)
    configured.backbone.load_state_dict(model.backbone.state_dict())
    with_cfg = _api_samples(configured)
    assert with_cfg == _api_samples(model, sampler="planned", planner="top_prob", planner_options={"gumbel": 0.5})
    assert with_cfg != _api_samples(configured, planner_options={})  # {} switches them off
    # another planner does not inherit options meant for top_prob (confidence has no gumbel)
    assert _api_samples(configured, planner="confidence") == _api_samples(model, sampler="planned",
                                                                         planner="confidence")
    with pytest.raises(UserError, match="mapping"):
        ddlm.apply_overrides(model.cfg, ["sample.planner_options=0.5"])


# --- the commit schedule against unmask_counts -----------------------------------------------------------------


def _commits(toy, steps, planner, fixed=None, fixed_mask=None, n=6):
    """Per-row commits at each step (B, steps observed) and the NFE of a planned run on the toy oracle."""
    proc = MaskingProcess(toy.V, LogLinear())
    masked_counts = []
    out = sample_masked(toy.oracle(), proc, n, toy.L, steps, rule="planned", planner=planner, fixed=fixed,
                        fixed_mask=fixed_mask, generator=torch.Generator().manual_seed(0),
                        hooks=Hooks(observer=lambda s: masked_counts.append(s.noisy.sum(-1).clone())))
    start = toy.L - (torch.zeros(n, dtype=torch.long) if fixed_mask is None else fixed_mask.sum(-1))
    left = torch.stack([start, *masked_counts], 1)  # (B, observed steps + 1)
    return (left[:, :-1] - left[:, 1:]).tolist(), out.nfe


def test_cosine_commits_what_unmask_counts_says_row_by_row():
    toy = ToyDistribution(3, 8, seed=2)
    commits, nfe = _commits(toy, 8, get_planner("top_prob", schedule="cosine"))
    assert unmask_counts(8, 8, "cosine") == [1, 0, 1, 1, 1, 1, 2, 1]
    assert commits == [unmask_counts(8, 8, "cosine")] * 6 and nfe == 8
    linear, _ = _commits(toy, 8, get_planner("top_prob"))
    assert linear == [[1] * 8] * 6
    # rows with 0, 2 and 5 given positions: each row follows the schedule of its own masked count
    fixed = torch.zeros(3, 8, dtype=torch.long)
    given = torch.zeros(3, 8, dtype=torch.bool)
    given[1, :2], given[2, 3:] = True, True
    commits, _ = _commits(toy, 8, get_planner("entropy", schedule="cosine"), fixed, given, n=3)
    assert commits == [unmask_counts(k, 8, "cosine") for k in (8, 6, 3)]


def test_cosine_nfe_ends_where_unmask_counts_has_nothing_left():
    toy = ToyDistribution(3, 2, seed=0)
    counts = unmask_counts(2, 4, "cosine")
    assert counts == [1, 0, 1, 0]  # everything is committed after the third step
    commits, nfe = _commits(toy, 4, get_planner("top_margin", schedule="cosine"))
    assert nfe == 3 and commits == [counts[:3]] * 6
    commits, nfe = _commits(toy, 4, get_planner("top_margin"))  # linear: 1, 1, then nothing to decode
    assert nfe == 2 and commits == [[1, 1]] * 6


def test_the_default_schedule_leaves_the_planner_as_it_was():
    assert "schedule" not in vars(get_planner("top_prob", schedule="linear"))
    assert repr(get_planner("top_margin", gumbel=0.5, schedule="linear")) == "TopMarginPlanner(gumbel=0.5)"
    assert get_planner("confidence", schedule="COSINE").schedule == "cosine"


# --- internal misuse is a bug with a traceback, not a user's mistake ----------------------------------------


def test_planned_rule_without_a_planner_is_a_value_error():
    masked = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="needs a planner") as e:
        planned_rule(None, torch.zeros(1, 3, 2), masked, None, None, 2, None, None, None)
    assert not isinstance(e.value, UserError)
    from ddlm.sampling.loop import MaskedRule

    with pytest.raises(ValueError, match="step rule") as e:
        MaskedRule(MaskingProcess(2, LogLinear()), rule="remask-ish")
    assert not isinstance(e.value, UserError)
