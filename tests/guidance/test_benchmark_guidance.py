"""benchmarks/guidance.py: the naturalness column (the base model's bound of each valid molecule, re-encoded as
its training records were) and the --curve sweep (best-of-N, SVDD, SMC points), on untrained tiny models built
from a hand-made vocabulary (no MOSES data, a few seconds)."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from ddlm import SequenceModel, apply_overrides, load_preset

pytest.importorskip("rdkit")

ROOT = Path(__file__).resolve().parents[2]
L = 12  # context: records of up to 11 tokens and their <eos>


def _bench():
    spec = importlib.util.spec_from_file_location("bench_guidance", ROOT / "benchmarks" / "guidance.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _bench()


def _model(vocab_text, records="smiles-5k", padding="learn", max_len=L):
    from ddlm.tasks.molecules.tokenizer import SmilesTokenizer

    tok = SmilesTokenizer.from_text(vocab_text, specials=True)
    cfg = apply_overrides(load_preset("molecules-tiny"), [f"data.records={records}", f"data.padding={padding}",
                                                          f"model.max_len={max_len}"])
    torch.manual_seed(0)
    model = SequenceModel(cfg, tok)
    model.backbone.eval()
    return model


def _row(model, text):
    """The record row `text <eos> <pad>...` (1, L) and its mask (record and <eos>), laid out by hand."""
    tok = model.tokenizer
    ids = tok.encode(text) + [tok.eos_id]
    row = torch.tensor([ids + [tok.pad_id] * (L - len(ids))])
    return row, row != tok.pad_id


@torch.no_grad()
def _direct_bound(model, batch, t_samples=4, seed=0):
    """The family's bound of one row, averaged over t-samples drawn from one generator seeded `seed`."""
    g = torch.Generator().manual_seed(seed)
    return sum(model.family.objective.bound(model.backbone, batch, generator=g).item()
               for _ in range(t_samples)) / t_samples


def test_nll_base_is_the_bound_of_the_canonical_record_row():
    model = _model("CCO\nCCN")
    row, _ = _row(model, "CCO")  # "OCC" is written canonically, as MOSES stores its molecules
    nat = bench.naturalness(model, ["OCC"])
    assert nat == {"nll_base": pytest.approx(_direct_bound(model, row), rel=1e-9), "n_scored": 1, "n_invalid": 0,
                   "n_long": 0, "n_unknown": 0}
    assert nat["nll_base"] != pytest.approx(_direct_bound(model, _row(model, "OCC")[0]), rel=1e-6)
    assert bench.naturalness(model, ["OCC"], seed=1)["nll_base"] != pytest.approx(nat["nll_base"], rel=1e-6)


def test_invalid_long_and_unknown_molecules_are_left_out_and_counted():
    model = _model("CCO\nCCN")
    alone = bench.naturalness(model, ["OCC"])["nll_base"]
    # C1CC: an unclosed ring; "": no molecule; 20 carbons: 20 tokens > 11; CCS: S is not in the vocabulary
    nat = bench.naturalness(model, ["C1CC", "OCC", "", "C" * 20, "CCS"])
    assert nat == {"nll_base": pytest.approx(alone, rel=1e-9), "n_scored": 1, "n_invalid": 2, "n_long": 1,
                   "n_unknown": 1}
    assert bench.naturalness(model, ["C1CC", "C" * 20]) == {"nll_base": None, "n_scored": 0, "n_invalid": 1,
                                                          "n_long": 1, "n_unknown": 0}
    fits = bench.naturalness(model, ["C" * 11, "C" * 12])  # 11 tokens and <eos> fill the context exactly
    assert (fits["n_scored"], fits["n_long"]) == (1, 1)


def test_a_selfies_base_scores_the_selfies_record_of_the_canonical_smiles():
    pytest.importorskip("selfies")
    model = _model("[C][O][N]", records="selfies-5k")
    row, _ = _row(model, "[C][C][O]")  # OCC -> CCO -> [C][C][O] (OCC's own SELFIES would be [O][C][C])
    nat = bench.naturalness(model, ["OCC"])
    assert nat["n_scored"] == 1 and nat["nll_base"] == pytest.approx(_direct_bound(model, row), rel=1e-9)


def test_a_padding_skip_base_pays_for_the_length_under_its_training_lengths():
    from ddlm.data.batches import Batch

    model = _model("CCO\nCCN", padding="skip")
    model.length_counts = torch.zeros(L + 1, dtype=torch.long)
    model.length_counts[4] = 3  # 3 training rows of 4 tokens (record + <eos>), 1 of 2
    model.length_counts[2] = 1
    row, mask = _row(model, "CCO")  # 4 tokens with <eos>: p(4) = (3 + 1/L) / (4 + 1)
    nat = bench.naturalness(model, ["OCC"])
    expected = _direct_bound(model, Batch(row, mask)) - math.log((3 + 1 / L) / 5)
    assert nat["nll_base"] == pytest.approx(expected, rel=1e-9)


def _curve_model():
    return _model("CCO", max_len=8)  # C and O only: almost every row decodes to a valid molecule


def test_best_of_n_keeps_the_highest_qed_of_each_molecules_draws():
    from ddlm.guidance.rewards import resolve_reward
    from ddlm.guidance.steer import texts_of

    model = _curve_model()
    draw = bench.Draws(dict(n=3, steps=4, length=None, seed=0, sampler="ancestral"))
    best, out, _ = bench.best_of(model, draw, 3, 4)
    qed, _ = resolve_reward("qed")
    every = texts_of(model, out.tokens)  # 12 draws: molecule i owns 4i..4i+3
    assert len(every) == 12 and len(set(every)) > 3
    for i, text in enumerate(best):
        own = every[4 * i: 4 * i + 4]
        assert text in own and qed([text])[0] == max(qed(own))
    assert draw(model, n=12)[0] is out  # the same call is sampled once


def test_best_of_n_svdd_draws_take_the_best_of_each_molecules_svdd_draws(tmp_path):
    from ddlm.guidance.rewards import resolve_reward
    from ddlm.guidance.steer import texts_of

    model = _curve_model()
    kw = dict(n=3, steps=4, length=None, seed=0, sampler="ancestral")
    best, out, _ = bench.best_of(model, bench.Draws(kw), 3, 2, reward="qed", svdd_candidates=2)
    svdd = model.generate(**dict(kw, n=6), reward="qed", svdd_candidates=2)  # the one call it makes
    assert torch.equal(out.tokens, svdd.tokens)
    qed, _ = resolve_reward("qed")
    every = texts_of(model, svdd.tokens)
    assert [qed([b])[0] for b in best] == [max(qed(every[2 * i: 2 * i + 2])) for i in range(3)]
    with pytest.raises(SystemExit) as e:  # refused before any model or data is loaded
        bench.main(["--model", str(tmp_path / "none"), "--grpo-best-of", "4"])
    assert e.value.code == 2


def test_curve_settings_give_one_point_each_at_their_measured_cost():
    from ddlm.guidance.steer import texts_of
    from ddlm.tasks.molecules.metrics import to_mol

    model = _curve_model()
    kw = dict(n=3, steps=4, length=None, seed=0, sampler="ancestral")
    points = bench.curve(model, bench.Draws(kw), 3, 0.1)
    assert [(p["method"], p["setting"]) for p in points] == [
        ("best-of-N", 1), ("best-of-N", 2), ("best-of-N", 4), ("best-of-N", 8),
        ("svdd-M", 2), ("svdd-M", 4), ("svdd-M", 8), ("smc-K", 2), ("smc-K", 4), ("smc-K", 8)]
    assert set(points[0]) == {"method", "setting", "nfe", "rows_per_molecule", "validity", "qed_median", "qed_p90"}
    plain = model.generate(**kw)
    assert points[0]["rows_per_molecule"] == plain.row_evals / 3 == 4  # one row per step
    assert [p["rows_per_molecule"] for p in points[:4]] == [4, 8, 16, 32]  # N draws per molecule
    for method in ("svdd-M", "smc-K"):  # more candidates or particles, more rows evaluated
        rows = [p["rows_per_molecule"] for p in points if p["method"] == method]
        assert rows == sorted(rows) and len(set(rows)) == 3
    for point, extra in ((points[6], dict(svdd_candidates=8)), (points[7], dict(smc_particles=2, smc_alpha=0.1))):
        out = model.generate(**kw, reward="qed", **extra)  # the point is this very call
        texts = texts_of(model, out.tokens)
        assert point["nfe"] == out.nfe and point["rows_per_molecule"] == round(out.row_evals / 3, 1)
        assert point["validity"] == round(sum(to_mol(t) is not None for t in texts) / 3, 4)


def test_plot_needs_the_curve_and_draws_one(tmp_path):
    with pytest.raises(SystemExit) as e:  # refused before any model or data is loaded
        bench.main(["--model", str(tmp_path / "none"), "--plot", str(tmp_path / "c.png")])
    assert e.value.code == 2
    pytest.importorskip("matplotlib")
    pts = [{"method": "best-of-N", "setting": n, "rows_per_molecule": 4.0 * n, "qed_median": 0.4 + 0.01 * n}
           for n in (1, 2)] + [{"method": "svdd-M", "setting": 2, "rows_per_molecule": 9.0, "qed_median": None}]
    assert bench.plot_curve(pts, tmp_path / "c.png", "t") == f"plot written to {tmp_path / 'c.png'}"
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_planned_draw_is_the_planned_generate_call_and_each_gumbel_its_own(tmp_path):
    model = _curve_model()
    kw = dict(n=4, steps=4, length=None, seed=0, sampler="ancestral")
    draw = bench.Draws(kw)
    planned = dict(sampler="planned", planner="top_margin", planner_options={"gumbel": 0.5})
    out, _ = draw(model, **planned)  # a dict option is part of the call's key
    assert torch.equal(out.tokens, model.generate(**dict(kw, **planned)).tokens)
    assert draw(model, **planned)[0] is out
    plain = dict(planned, planner_options={"gumbel": 0.0})
    other, _ = draw(model, **plain)
    assert other is not out
    assert torch.equal(other.tokens, model.generate(**dict(kw, **plain)).tokens)
    for bad in (["--order", "confidence"], ["--order-gumbel", "-1"]):  # refused before any model is loaded
        with pytest.raises(SystemExit) as e:
            bench.main(["--model", str(tmp_path / "none"), *bad])
        assert e.value.code == 2
