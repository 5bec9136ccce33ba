"""Progressive unmasking (PUMA): the chains follow a hand-made model's confidence order phase by phase, the
counts per phase, the loss on a progressive batch is the family's formula on that mask, and `uniform` leaves
the MDLM objective as it was, bit for bit."""

import math

import numpy as np
import pytest
import torch

from ddlm.config import ProcessConfig
from ddlm.data.batches import Batch
from ddlm.errors import UserError
from ddlm.families import build_family
from ddlm.objectives.progressive import ProgressiveObjective, reveal_top, target_counts

V, L, B, K = 9, 27, 6, 5


class FixedLogits(torch.nn.Module):
    """A fake backbone whose logits (B, L, V + 1) do not depend on x_t: its confidences are known."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits  # (L, V + 1)
        self.calls = 0

    def forward(self, x, t=None, **kw):
        self.calls += 1
        return self.logits.expand(x.shape[0], -1, -1).clone()


def _logits(seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([3 * torch.randn(L, V, generator=g), torch.zeros(L, 1)], dim=-1)


def _oracle_scores(logits: torch.Tensor, planner: str) -> np.ndarray:
    """Confidence per position (L,) in float64 numpy, written out independently of the library."""
    z = logits[:, :V].double().numpy()
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    top = np.sort(p, -1)[:, ::-1]
    return top[:, 0] if planner == "top_prob" else top[:, 0] - top[:, 1]


def _objective(planner="top_prob", threshold=0.0, weighting="ce", fraction=1.0, phases=K):
    cfg = ProcessConfig(name="mdlm", loss_weighting=weighting, masking="progressive", progressive_phases=phases,
                        progressive_planner=planner, progressive_threshold=threshold,
                        progressive_fraction=fraction)
    obj = build_family(cfg, V).objective
    assert isinstance(obj, ProgressiveObjective)
    return obj


def _data(step: int) -> torch.Tensor:
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(100 + step))


@pytest.mark.parametrize("planner", ["top_prob", "top_margin"])
def test_chains_reveal_the_most_confident_positions_first_phase_by_phase(planner):
    logits = _logits()
    model, obj = FixedLogits(logits), _objective(planner)
    conf = _oracle_scores(logits, planner)
    assert len(set(np.round(conf, 12))) == L  # distinct confidences: one right order
    g = torch.Generator().manual_seed(0)
    seen_phases = set()
    for step in range(3 * K):
        obj(model, _data(step), g)
        before = obj.last["xt"][:B]  # the state the loss was computed on
        after, phase = obj.pool["xt"], obj.pool["phase"]
        for r in range(B):
            if phase[r] >= K:  # finished: refilled at the next call
                continue
            was = before[r] == V
            now = after[r] == V
            new = (was & ~now).numpy()
            assert not (now & ~was).any()  # nothing is masked again
            assert (after[r][~now] == obj.pool["x0"][r][~now]).all()  # revealed with the data's tokens
            if new.any() and now.any():
                # every newly revealed position is more confident than every position left masked
                assert conf[new].min() > conf[now.numpy()].max()
            # the newly revealed are exactly the top-k of the previously masked by the oracle confidence
            k = int(new.sum())
            masked_idx = np.flatnonzero(was.numpy())
            top = masked_idx[np.argsort(-conf[masked_idx], kind="stable")[:k]]
            assert set(top) == set(np.flatnonzero(new))
            seen_phases.add(int(phase[r]))
    assert seen_phases == set(range(1, K))  # every phase was walked through
    assert model.calls == 3 * K  # one network call per step: the training pass's logits are reused


def test_counts_per_phase():
    model, obj = FixedLogits(_logits(1)), _objective()
    g = torch.Generator().manual_seed(1)
    for step in range(2 * K + 1):
        obj(model, _data(step), g)
        shown = (obj.pool["xt"] != V).sum(-1)
        for r in range(B):
            j = int(obj.pool["phase"][r])
            if j >= K:
                continue
            # phase j holds round(r L) revealed cells for some r in [j/K, (j+1)/K), at most L - 1
            assert round(j / K * L) <= shown[r] <= min(round((j + 1) / K * L), L - 1)
    # the count itself, for given draws u
    phase = torch.tensor([0, 1, 2, 4, 4])
    u = torch.tensor([0.0, 0.5, 0.99, 0.0, 0.999])
    n = target_counts(phase, u, torch.full((5,), 81), 5)
    assert n.tolist() == [0, round(1.5 / 5 * 81), round(2.99 / 5 * 81), round(4 / 5 * 81), 80]


def test_finished_chains_take_the_batch_row_at_their_index():
    model, obj = FixedLogits(_logits(2)), _objective()
    g = torch.Generator().manual_seed(2)
    obj(model, _data(0), g)
    done = obj.pool["done"].clone()
    assert done.any()  # phases are spread over the pool from the start: the last phase's rows finish now
    x1 = _data(1)
    obj(model, x1, g)
    assert torch.equal(obj.last["batch"].tokens[done], x1[done])
    assert torch.equal(obj.last["batch"].tokens[~done], _data(0)[~done])
    fresh = obj.last["xt"][done]
    assert ((fresh != V).sum(-1) <= round(L / K)).all()  # phase 0: under 1/K revealed


def test_threshold_reveals_every_sure_cell_and_jumps_phases():
    logits = torch.zeros(L, V + 1)
    logits[: L // 2, 0] = 10.0  # half of the cells are sure (p > 0.99), the rest uniform
    model, obj = FixedLogits(logits), _objective(threshold=0.9)
    g = torch.Generator().manual_seed(3)
    obj(model, _data(0), g)
    alive = obj.pool["phase"] < K
    assert (obj.pool["xt"][alive][:, : L // 2] != V).all()  # every sure cell is revealed
    frac = (obj.pool["xt"][alive] != V).float().mean(-1)
    assert (obj.pool["phase"][alive] >= (frac * K).floor().clamp_max(K - 1)).all()


@pytest.mark.parametrize("weighting", ["ce", "elbo"])
def test_loss_is_the_family_formula_on_the_progressive_mask(weighting):
    logits = _logits(4)
    model, obj = FixedLogits(logits), _objective(weighting=weighting)
    g = torch.Generator().manual_seed(4)
    for step in range(3):
        out = obj(model, _data(step), g)
    xt, t, x0 = obj.last["xt"], obj.last["t"], obj.last["batch"].tokens
    masked = (xt == V).double()
    logp = torch.log_softmax(logits[:, :V].double(), -1)  # (L, V): SUBS drops the MASK logit
    nll = -logp[torch.arange(L), x0]  # (B, L)
    frac = masked.mean(-1)
    sched = obj.process.schedule
    assert torch.allclose(1 - sched.alpha(t.double()), frac, atol=1e-6)  # t: the time that masks that fraction
    if weighting == "ce":
        want = (nll * masked).sum() / masked.sum()
    else:  # MDLM's continuous-time weight (1 - t_eps) * -alpha'(t) / (1 - alpha(t)), per token
        w = (1 - obj.inner.t_eps) * (-sched.dalpha(t.double())) / (1 - sched.alpha(t.double()))
        want = (w * (nll * masked).sum(-1)).mean() / L
    assert math.isclose(float(out["loss"]), float(want), rel_tol=1e-5)


def test_fraction_keeps_uniform_rows_at_the_end():
    model, obj = FixedLogits(_logits(5)), _objective(fraction=0.5)
    g = torch.Generator().manual_seed(5)
    obj(model, _data(0), g)
    assert len(obj.pool["x0"]) == B // 2
    assert torch.equal(obj.last["batch"].tokens[B // 2:], _data(0)[B // 2:])


def _old_mdlm_loss(process, model, x0, generator, t_eps=1e-3):
    """The MDLM ce/elbo loss as written before progressive masking (stratified t, continuous time)."""
    u = torch.rand(1, generator=generator)
    t = t_eps + (1 - t_eps) * ((u + torch.arange(x0.shape[0]) / x0.shape[0]) % 1.0)
    xt = process.sample_xt(x0, t, generator)
    logp = process.log_probs(model(xt, t))
    nll = -logp.gather(-1, x0[..., None])[..., 0]
    masked = process.is_masked(xt)
    nll = nll * masked
    ce = nll.sum() / masked.sum().clamp_min(1)
    nelbo = ((1 - t_eps) * process.schedule.weight(t) * nll.sum(-1)).mean() / x0.shape[1]
    return ce, nelbo


class Embed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(V + 1, V + 1)
        torch.nn.init.normal_(self.table.weight, generator=torch.Generator().manual_seed(6))

    def forward(self, x, t=None, **kw):
        return self.table(x)


@pytest.mark.parametrize("weighting", ["ce", "elbo"])
def test_uniform_masking_is_the_old_objective_bit_for_bit(weighting):
    fam = build_family(ProcessConfig(name="mdlm", loss_weighting=weighting, masking="uniform"), V)
    assert not isinstance(fam.objective, ProgressiveObjective)
    model, x0 = Embed(), _data(0)
    out = fam.objective(model, x0, torch.Generator().manual_seed(7))
    ce, nelbo = _old_mdlm_loss(fam.process, model, x0, torch.Generator().manual_seed(7))
    assert torch.equal(out["loss"], ce if weighting == "ce" else nelbo)


def test_state_round_trip_continues_exactly():
    model = FixedLogits(_logits(8))
    a, b = _objective("top_margin"), _objective("top_margin")
    ga = torch.Generator().manual_seed(8)
    for step in range(4):
        a(model, _data(step), ga)
    b.load_state_dict(a.state_dict())
    gb = torch.Generator()
    gb.set_state(ga.get_state())
    for step in range(4, 8):
        assert torch.equal(a(model, _data(step), ga)["loss"], b(model, _data(step), gb)["loss"])
        assert torch.equal(a.pool["xt"], b.pool["xt"])


def test_context_positions_are_never_masked_nor_counted():
    model, obj = FixedLogits(_logits(9)), _objective()
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[:, :5] = False  # a prompt of five positions
    g = torch.Generator().manual_seed(9)
    for step in range(K + 1):
        obj(model, Batch(_data(step), mask), g)
        assert (obj.last["xt"][:, :5] != V).all()
        assert (obj.pool["xt"][:, :5] != V).all()


def test_reveal_top_breaks_ties_to_the_lowest_index():
    s = torch.tensor([[0.5, 0.9, 0.9, 0.1]])
    cand = torch.tensor([[True, True, True, True]])
    assert reveal_top(s, cand, torch.tensor([1])).tolist() == [[False, True, False, False]]
    assert reveal_top(s, cand & torch.tensor([[True, False, True, True]]), torch.tensor([2])).tolist() == \
        [[True, False, True, False]]


@pytest.mark.parametrize("name", ["rdm-absorbing", "d3pm-absorbing", "ar"])
def test_other_families_refuse_progressive_masking_in_one_line(name):
    with pytest.raises(UserError, match="supports the mdlm family only") as e:
        build_family(ProcessConfig(name=name, masking="progressive", steps=10), V)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("field,value", [("masking", "random"), ("progressive_phases", 0),
                                         ("progressive_planner", "nope"), ("progressive_threshold", 1.5),
                                         ("progressive_fraction", 0.0)])
def test_bad_options_are_user_errors(field, value):
    cfg = {"name": "mdlm", "masking": "progressive", field: value}
    with pytest.raises(UserError):
        build_family(ProcessConfig(**cfg), V)


@pytest.mark.slow  # three training runs, final validation included (~8 s on a loaded machine)
def test_progressive_training_is_reproducible_and_differs_from_uniform(tmp_path):
    """Two runs with one seed train the same weights bit for bit (the pool draws only from the seeded training
    noise); the same run with uniform masking trains other weights."""
    import ddlm
    from safetensors.torch import load_file

    def weights(name, masking):
        cfg = ddlm.apply_overrides(ddlm.load_preset("sudoku-tiny"), [
            "train.max_steps=3", "train.ckpt_every=0", f"process.masking={masking}",
            "process.progressive_phases=2", "process.progressive_planner=top_margin"])
        ddlm.fit(cfg, tmp_path / name, progress=False)
        return load_file(tmp_path / name / "model" / "model.safetensors")

    a, b, u = weights("a", "progressive"), weights("b", "progressive"), weights("u", "uniform")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], u[k]) for k in a)


def test_a_resumed_progressive_run_equals_an_uninterrupted_one(tmp_path):
    """The pool of chains is in the checkpoint: resuming from step 2 of 4 trains the very weights of the run
    that never stopped (fresh chains at step 2 would train others)."""
    import shutil

    import ddlm
    from safetensors.torch import load_file

    from ddlm.cli import main

    cfg = ddlm.apply_overrides(ddlm.load_preset("sudoku-tiny"), [
        "train.max_steps=4", "train.ckpt_every=2", "train.threads=1", "process.masking=progressive",
        "process.progressive_phases=2", "process.progressive_planner=top_margin"])
    ddlm.fit(cfg, tmp_path / "whole", progress=False)
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    for p in (tmp_path / "resumed" / "checkpoints").glob("step-00000004.*"):
        p.unlink()  # as if stopped after the checkpoint at step 2
    state = torch.load(sorted((tmp_path / "resumed" / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    assert state["step"] == 2 and state["objective"]["xt"].shape[1] == 81
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--quiet"]) == 0
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
