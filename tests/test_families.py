"""Every family behind the same interfaces; D3PM's bound and sampler against exact answers on toys."""

import itertools
import json
import math

import pytest
import torch

from ddlm.cli import main
from ddlm.config import ProcessConfig, RunConfig, apply_overrides
from ddlm.errors import UserError
from ddlm.families import FAMILIES, D3PMBound, build_family, configure
from ddlm.objectives.d3pm import exact_vlb
from ddlm.objectives.mdlm import MDLMObjective
from ddlm.processes.d3pm import make_d3pm_process
from ddlm.processes.masking import MaskingProcess
from ddlm.processes.schedules import LogLinear
from ddlm.sampling import options
from ddlm.sampling.d3pm import _columns, reverse_probs, time_grid
from ddlm.toys import ToyDistribution

TEXT = "In the beginning God created the heaven and the earth. And the earth was without form, and void.\n" * 40


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(TEXT)
    return str(path)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_trains_samples_and_evaluates_through_the_cli(name, corpus, tmp_path, capsys):
    out = str(tmp_path / name)
    rc = main(["train", "--preset", "tiny", "--process", name, "--data", corpus, "--out", out, "--quiet",
               "--max-steps", "3", "--batch-size", "4", "train.threads=1", "model.max_len=16", "model.n_layers=1",
               "process.steps=20", "train.ckpt_every=0"])
    assert rc == 0
    capsys.readouterr()
    assert main(["sample", out, "--n", "2", "--steps", "8", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert len(s["samples"]) == 2 and all(len(t) == 16 for t in s["samples"])
    assert 1 <= s["nfe"] <= (1 if name == "ar" else 8) * (16 if name == "ar" else 1)
    assert main(["eval", out, "--max-blocks", "4", "--t-samples", "2", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["family"] == name and math.isfinite(m["bpc"]) and m["bpc"] > 0


def test_configure_switches_time_conditioning_on_and_refuses_a_contradiction():
    cfg = apply_overrides(RunConfig(), ["process.name=d3pm-uniform"])
    assert configure(cfg).model.time_conditioning is True
    assert configure(apply_overrides(RunConfig(), ["process.name=mdlm"])).model.time_conditioning is False
    bad = apply_overrides(cfg, ["model.time_conditioning=false"])
    with pytest.raises(UserError, match="time_conditioning"):
        configure(bad, ["model.time_conditioning=false"])


def test_d3pm_objective_refuses_a_time_free_backbone():
    toy = ToyDistribution(3, 3, seed=0)
    fam = build_family(ProcessConfig(name="d3pm-absorbing", steps=4), 3)
    oracle = toy.oracle()
    oracle.time_conditioned = False
    with pytest.raises(UserError, match="time_conditioning=true"):
        fam.objective(oracle, toy.sample(2))


def test_each_family_accepts_only_its_samplers():
    d3pm = build_family(ProcessConfig(name="d3pm-uniform", steps=10), 5)
    with pytest.raises(UserError, match="d3pm-uniform family samples with --sampler ancestral"):
        options(d3pm, "planned", "random", 8, 1.0)
    rdm = build_family(ProcessConfig(name="rdm-multinomial", steps=10), 5)
    assert options(rdm, "routing", "random", 8, 1.0)["route"] == "deterministic"
    with pytest.raises(UserError):
        options(rdm, "planned", "random", 8, 1.0)
    mdlm = build_family(ProcessConfig(name="mdlm"), 5)
    assert options(mdlm, "planned", "top_margin", 8, 1.0)["rule"] == "planned"
    with pytest.raises(UserError):
        options(mdlm, "routing", "random", 8, 1.0)


def _mdlm_discrete_elbo_exact(toy, x, T):
    """MDLM's discrete-T NELBO for one sequence x (L,), its expectation over the masks by enumeration,
    using MDLMObjective's own weights: sum_i (1/T) weight(i/T) E_mask[sum_masked -log p~]."""
    obj = MDLMObjective(MaskingProcess(toy.V, LogLinear(eps=0.0)), discrete_steps=T)
    oracle = toy.oracle()
    total = 0.0
    for i in range(1, T + 1):
        t = torch.tensor([i / T], dtype=torch.float64)
        a = float(obj.process.schedule.alpha(t))
        for mask in itertools.product([False, True], repeat=toy.L):
            m = torch.tensor(mask)
            prob = (1 - a) ** int(m.sum()) * a ** int((~m).sum())
            if prob == 0:
                continue
            xt = torch.where(m, torch.full_like(x, toy.V), x)[None]
            logp = obj.process.log_probs(oracle(xt).double())[0].double()  # (L, V)
            nll = -(logp.gather(-1, x[:, None])[:, 0] * m).sum()
            total += prob * float(obj.weight(t)) / T * float(nll)
    return total


@pytest.mark.parametrize("T", [1, 3, 8])
def test_d3pm_absorbing_vlb_equals_mdlm_discrete_elbo(T):
    """Same schedule (abar_t = 1 - t/T = MDLM's log-linear alpha with eps = 0 at t/T): the two bounds agree."""
    toy = ToyDistribution(3, 3, seed=7)
    proc = make_d3pm_process("absorbing", 3, T, schedule="absorbing")
    for x in toy.support[[0, 4, 11, 25]]:
        vlb = float(exact_vlb(toy.oracle(), proc, x[None])[0])
        elbo = _mdlm_discrete_elbo_exact(toy, x, T)
        assert vlb == pytest.approx(elbo, rel=1e-6)  # MDLM scores in float32


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_d3pm_family_bound_is_unbiased_for_the_exact_vlb(kind):
    toy = ToyDistribution(3, 3, seed=8)
    oracle = toy.oracle()  # any fixed denoiser will do: both sides score the same model
    T = 6
    proc = make_d3pm_process(kind, 3, T)
    x = toy.support[[5, 17]]
    exact = exact_vlb(oracle, proc, x)
    g = torch.Generator().manual_seed(0)
    vals = torch.stack([D3PMBound(proc).bound(oracle, x.repeat(2000, 1), generator=g).view(2000, 2)
                        for _ in range(4)]).view(-1, 2).double()
    ci = 4 * vals.std(0) / math.sqrt(len(vals))
    assert ((vals.mean(0) - exact).abs() < ci).all(), (vals.mean(0), exact, ci)


@pytest.mark.parametrize("kind", ["uniform", "absorbing", "gaussian", "nearest_neighbour"])
def test_d3pm_reverse_step_matches_the_process_and_skips_match_matrix_products(kind):
    V, T = 5, 6
    kwargs = {"embedding": torch.randn(V, 2, generator=torch.Generator().manual_seed(1))} \
        if kind == "nearest_neighbour" else {}
    proc = make_d3pm_process(kind, V, T, **kwargs)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, proc.n_states, generator=g)
    x_t = torch.randint(0, proc.n_states, (2, 4), generator=g)
    logp0 = proc.x0_log_probs(logits)
    for t in range(2, T + 1):  # one step: the process's own x0-parameterised posterior
        mine = reverse_probs(proc, logp0, x_t, t - 1, t)
        ref = proc.reverse_log_probs(logits, x_t, torch.full((2,), t)).exp()
        ok = ~ref.isnan().any(-1)  # NaN rows: x_t impossible at t (a token at T under absorbing)
        assert ok.any() and torch.allclose(mine[ok], ref[ok], atol=1e-10)
    Q, _ = proc.matrices()
    for s, t in [(1, 4), (2, 6), (0, 3)]:  # a skip: q(x_t | x_s) is the product Q_{s+1} ... Q_t
        prod = torch.linalg.multi_dot([Q[i] for i in range(s + 1, t + 1)]) if t - s > 1 else Q[t]
        assert torch.allclose(_columns(proc, x_t, s, t), prod.T[x_t], atol=1e-10)


def test_d3pm_time_grid_and_sampler_nfe():
    assert time_grid(10, 4) == [10, 8, 5, 2, 0]  # round(k * T / K)
    assert time_grid(3, 50) == [3, 2, 1, 0]  # never more steps than T
    fam = build_family(ProcessConfig(name="d3pm-absorbing", steps=12), 3)
    toy = ToyDistribution(3, 4, seed=1)
    g = torch.Generator().manual_seed(0)
    fixed = torch.tensor([[2, 0, 0, 1]])
    given = torch.tensor([[True, False, False, True]])
    out = fam.sample(toy.oracle(), fam.process, 5, 4, steps=4, fixed=fixed, fixed_mask=given, generator=g)
    assert out.nfe == 4 and (out.tokens < 3).all()
    assert (out.tokens[:, 0] == 2).all() and (out.tokens[:, 3] == 1).all()


@pytest.mark.slow
def test_d3pm_absorbing_sampler_with_oracle_at_one_token_per_step_reproduces_the_distribution():
    """With T = 256 steps and L = 3 tokens two tokens rarely unmask in the same step (about 1% of samples), so
    the sampler is the oracle's random-order factorisation up to a bias the chi-square at 4000 samples cannot
    see; a wrong posterior (e.g. the mixture instead of eq. 4, or a skipped step) shows at once."""
    toy = ToyDistribution(3, 3, seed=3)
    fam = build_family(ProcessConfig(name="d3pm-absorbing", steps=256), 3)
    g = torch.Generator().manual_seed(0)
    out = fam.sample(toy.oracle(), fam.process, 4000, 3, steps=256, generator=g)
    stat, crit = toy.chi_square(out.tokens)
    assert stat < crit, (stat, crit)


def test_every_family_samples_beyond_its_context(tmp_path):
    """Sliding blocks need no MASK token: families without one (uniform noise) extend too."""
    import ddlm

    for name in ("d3pm-uniform", "rdm-multinomial", "mdlm"):
        cfg = ddlm.apply_overrides(ddlm.load_preset("tiny"), [f"process.name={name}", "model.max_len=8",
                                                              "train.max_steps=1", "process.steps=8"])
        from ddlm.families import configure
        model = ddlm.SequenceModel(configure(cfg), _char_tokenizer())
        out = model.generate(n=2, length=20, steps=4, seed=0)
        assert out.tokens.shape == (2, 20) and (out.tokens < model.tokenizer.vocab_size).all()


def _char_tokenizer():
    from ddlm.data.tokenizers import CharTokenizer

    return CharTokenizer.from_text("abcdefgh ")
