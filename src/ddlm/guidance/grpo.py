"""Policy-gradient reward fine-tuning of a masked diffusion model with the exact reward: GRPO (Shao et al. 2024,
"DeepSeekMath", arXiv 2402.03300) with the likelihood a masked diffusion model can give, as d1's diffu-GRPO
(Zhao et al. 2025, arXiv 2504.12216) and LLaDA 1.5's VRPO (Zhu et al. 2025, arXiv 2505.19223) do.

Every iteration draws a group of G records x^1..x^G from the current model with its own sampler (no gradients),
scores them with the reward r (RDKit's QED itself: no surrogate, nothing differentiable needed) and takes the
group-relative advantages

    A_i = (r_i - mean_j r_j) / (std_j r_j + 1e-4)

log p_theta(x) of a masked diffusion model is intractable; its ELBO stands in for it (one draw of t and of the
mask per record and per copy, `masks` copies, MDLM's continuous-time weight w(t) = -alpha'(t) / (1 - alpha(t))):

    ELBO_theta(x) ~= w(t) * sum_{l masked in x_t} log p_theta(x^l | x_t)

With coupled=True the copies come in pairs, a mask and its complement (draw_masks), so each pair scores every
token once: measured on 32 records of the 3000-step SELFIES model, the per-record ELBO estimate's standard
deviation over 100 redraws falls from 0.77 to 0.52 nats/token at 2 masks and from 0.52 to 0.45 at 4. It did not
raise the reward of a group-64 QED run (group means to 0.62 against the plain run's 0.66; README, GRPO).

Each group serves `inner` Adam steps on the same records and masks, with PPO's clipped per-token ratio
rho_l = p_theta(x^l | x_t) / p_old(x^l | x_t) against the weights that drew the group (as diffu-GRPO does):

    J = mean_i  w(t_i) / n_i * sum_{l masked, l <= <eos>} min(rho_l A_i, clip(rho_l, 1 - eps, 1 + eps) A_i)
    loss = -J + beta * mean_{i, masked l} KL(p_theta(. | x_t) || p_ref(. | x_t))_l

n_i: the record's tokens and its <eos> (GRPO's per-token average; the <pad> after it: see record_rows). At the
first inner step rho = 1 and the gradient of J is the plain policy gradient mean_i A_i grad ELBO_theta(x^i) / n_i.
The KL term is GRPO's, taken exactly over the vocabulary of each masked position's denoising distribution (the
network gives all of it) against the frozen pretrained copy on the same x_t; GRPO's sampled estimator
k3 = exp(q) - q - 1 of one token (q = log p_ref - log p_theta) was tried first: where the model had made a token
unlikely that the reference still liked, exp(q) reached 1e11 in a run without the KL term. A group whose rewards
all agree (every A_i = 0) only pulls towards the reference.

Two variants were measured on QED (group 64; README, GRPO) and not kept: advantages clipped at zero (raising the
better records only, never lowering the worse) did not learn (the group's mean QED 0.48 after 30 steps, against
0.62 for the plain run); and groups half drawn by SVDD from the current model (off-policy records that pull the
model towards its guided sampler) rose faster at a lower KL for 70 steps, then broke down (KL 2-6 nats, the
model's own mean QED falling to 0.30-0.56) at both learning rates tried.

A break after ~140 steps (README, GRPO; group 64 on the 3000-step rotary+learned SELFIES base): at lr 4e-4 and
at 2e-4 alike, between steps 135 and 150 the KL per masked position jumps (0.5 -> 1.3; 0.4 -> 3.4 nats), the
model's ELBO of its own group falls (-1.8 -> -4.5; -1.8 -> -6.8 nats per token) and the group's QED falls back
(0.74 -> 0.65; 0.71 -> 0.53). In the lr 4e-4 model at step 172, 16.5% of its own samples' masked record tokens
get log p < -10 (the base: 1.2% on the same records): the policy term lowered the ELBO of the worse records by
loosening the bound, not by making them less likely, the bias of a one-sided bound that SPG (Wang et al. 2025,
arXiv 2510.09541) answers with an upper bound for negative advantages. `floor` is a cheap guard instead: a worse
record's token is pushed down only while its log p stays within `floor` nats of the reference's. With floor 2
at lr 4e-4 the same run went 200 steps without a break (KL 0.12-0.22, own ELBO -1.5 throughout) but learned
less (group means 0.64-0.67 from step 20 on, against 0.71-0.73 before the break without it); floor 4 learned
more (0.71-0.73 from step 100 on, KL up to 0.36) and did not break in 200 steps either, but did at ~290 (KL
0.45 -> 2.2, the group's QED 0.78 -> 0.37 within 5 steps; its step-275 model samples a plain median QED of 0.807).
break_signs finds such a break within 3 steps of its start; finetune warns there.
"""

from __future__ import annotations

import copy
import statistics

import torch

from ..data.batches import Batch
from ..errors import UserError
from ..objectives.mdlm import MDLMObjective
from ..sampling.stops import first_end
from .value import require_masked_diffusion


def record_rows(model, tokens: torch.Tensor) -> tuple[Batch, torch.Tensor]:
    """Sampled rows (G, L) as the model trains on them (data/record_data.py), and the positions the policy term
    scores (G, L) bool. A row's text ends at its first end token, <eos> or a <pad> drawn before any <eos>, as
    sampling/stops.py's cut_at_end ends it; every position after it is <pad>. With data.padding=skip only the
    record and its end token count (and are attended to), with learn (or no records) every position counts and
    may be masked. The policy term scores the record and its end token only (every position of a row without
    one): the <pad> after the end are not part of the text, so scoring them only adds gradient; the KL term
    still covers them.

    Why a <pad> ends a row here too (README, GRPO): a padding=learn model sometimes draws a <pad> before any
    <eos> (3 of 32 rows of the 3000-step SELFIES base, two of them at position 0: an empty text, the group's
    worst). Ended at its <eos> only, such a row was scored whole, <pad> after <pad>, and its negative advantage
    taught the model to stop writing <pad>: every group-64 QED run broke between steps 55 and 70 (the model's
    ELBO of its own records fell from -1.6 to -6 nats per token); in the one traced, at step 100, the KL at
    <pad> positions was 13.9 nats and its rows, decoded without the stop, put <pad> mid-record and atoms after
    <eos>. With the row ended here the same run kept its KL at 0.35 through step 80."""
    eos = getattr(model.tokenizer, "eos_id", None)
    pad = getattr(model.tokenizer, "pad_id", None)
    if eos is None or pad is None:
        return Batch(tokens), torch.ones_like(tokens, dtype=torch.bool)
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    after = pos[None] > first_end(tokens, (eos, pad))[:, None]  # (G, L) past the first end token
    rows = torch.where(after, torch.full_like(tokens, pad), tokens)
    if getattr(model.cfg.data, "padding", "learn") == "skip":
        return Batch(rows, ~after), ~after
    return Batch(rows), ~after


def draw_masks(objective, batch: Batch, masks: int, generator=None, coupled: bool = False):
    """`masks` noised copies of each record: (copies Batch (G*m rows), t (G*m,), x_t (G*m, L), w (G*m,) the ELBO
    weight of each copy); t stratified over the drawn copies (MDLM's low-discrepancy draw); what does not count
    is context, never masked.

    coupled (masks even): the second half of the copies are the complements of the first half's masks
    (DiffuCoder's coupled sampling, Gong et al. 2025, arXiv 2506.20639): a copy masked at time t with mask M is
    paired with the same record masked exactly where M is not, at the time t' with 1 - alpha(t') = alpha(t), so
    each pair scores every counted token once and the ELBO's mask noise partly cancels. Substituting
    v = alpha(t) shows the complement is unbiased with the weight (1 - t_eps) * -alpha'(t) / alpha(t) (equal to
    w(t') for the log-linear schedule), up to the ends of the t-range: [alpha(1), alpha(t_eps)] against
    [1 - alpha(t_eps), 1 - alpha(1)], the same to 1e-6 for the default log-linear schedule and t_eps."""
    if coupled and (masks % 2 or objective.T):
        raise UserError("coupled masks come in pairs of a mask and its complement under a continuous-time "
                        f"schedule: masks must be even (got {masks}) and process.discrete_steps 0")
    drawn = masks // 2 if coupled else masks
    big = _copies(batch, drawn)
    t = objective.sample_t(big.tokens.shape[0], generator, big.tokens.device)
    xt = objective.process.sample_xt(big.tokens, t, generator)
    if big.mask is not None:
        xt = torch.where(big.mask, xt, big.tokens)
    w = objective.weight(t)
    if not coupled:
        return big, t, xt, w
    sched = objective.process.schedule
    counted = torch.ones_like(xt, dtype=torch.bool) if big.mask is None else big.mask
    masked = objective.process.is_masked(xt)
    xt_c = torch.where(counted & ~masked, torch.full_like(xt, objective.process.mask_id), big.tokens)  # (N/2, L)
    t_c = complement_time(sched, t)
    w_c = (1.0 - objective.t_eps) * -sched.dalpha(t) / sched.alpha(t).clamp_min(1e-12)
    return _copies(batch, masks), torch.cat([t, t_c]), torch.cat([xt, xt_c]), torch.cat([w, w_c])


def _copies(batch: Batch, m: int) -> Batch:
    """The records of `batch` repeated m times (copy k of record i at row k * G + i)."""
    return Batch(batch.tokens.repeat(m, 1), None if batch.mask is None else batch.mask.repeat(m, 1),
                 None if batch.cond is None else batch.cond.repeat(m))


def complement_time(schedule, t: torch.Tensor) -> torch.Tensor:
    """t' (N,) with 1 - alpha(t') = alpha(t): the time whose masking rate is t's keeping rate. alpha decreases on
    [0, 1], so bisection (60 halvings in float64) finds it for any schedule."""
    target = 1.0 - schedule.alpha(t.double())  # alpha(t') wanted
    lo, hi = torch.zeros_like(target), torch.ones_like(target)
    for _ in range(60):
        mid = (lo + hi) / 2
        above = schedule.alpha(mid) > target  # alpha(mid) too high: t' is later
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return ((lo + hi) / 2).to(t.dtype)


def token_logp(net, objective, big: Batch, xt, t):
    """(log p_net(x^l | x_t) (N, L) at the masked counted positions, 0 elsewhere; masked (N, L) bool; the whole
    log p_net(. | x_t) (N, L, V))."""
    nll, masked, logp = objective.scored(net, big, xt, t)
    return -nll, masked, logp


def policy_loss(backbone, ref_logp: torch.Tensor, objective, big: Batch, t, xt, advantages: torch.Tensor,
                beta: float, old: torch.Tensor | None = None, clip: float = 0.2,
                scored: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                floor: float | None = None) -> dict:
    """The loss above on the noised copies (big, t, xt) of draw_masks, advantages (G,) of the G records (repeated
    over the copies); ref_logp (N, L, V): the frozen reference's log p(. | x_t) (token_logp(...)[2], the same for
    every inner step); old (N, L): token_logp of the weights that drew the group (None: the current ones, rho = 1);
    scored (N, L) bool: the positions J counts, n_i their number (None: the batch's counted positions; see
    record_rows); weight (N,): each copy's ELBO weight (draw_masks' w; None: objective.weight(t)); floor (nats):
    a token of a record with a negative advantage is left out of J once its log p is more than `floor` below the
    reference's (None: never). {"loss", "kl"
    (mean KL per masked position, nats), "elbo" (mean ELBO per scored position), "token_logp" (N, L) detached:
    the `old` of the steps after this one}."""
    lp, masked, logp = token_logp(backbone, objective, big, xt, t)  # (N, L), (N, L), (N, L, V)
    N = big.tokens.shape[0]
    if scored is None:
        scored = torch.ones_like(masked) if big.mask is None else big.mask
    w = objective.weight(t) if weight is None else weight
    scale = w / scored.sum(-1).clamp_min(1)  # (N,) w(t) / n
    a = advantages.repeat(N // advantages.shape[0])[:, None]  # (N, 1)
    acts = masked & scored  # (N, L) the positions J counts
    pushed = acts
    if floor is not None:  # the worse records' tokens go down only to the reference's log p minus `floor`
        ref_token = ref_logp.gather(-1, big.tokens.unsqueeze(-1)).squeeze(-1)  # (N, L)
        pushed = acts & ~((a < 0) & (lp.detach() < ref_token - floor))
    rho = torch.exp(lp - (lp.detach() if old is None else old)) * pushed  # (N, L)
    surrogate = torch.minimum(rho * a, rho.clamp(1 - clip, 1 + clip) * a) * pushed
    J = (scale * surrogate.sum(-1)).mean()
    per_position = (logp.exp() * (logp - ref_logp)).sum(-1)  # (N, L) KL(p_theta || p_ref) of each position
    kl = (per_position * masked).sum() / masked.sum().clamp_min(1)  # masked: counted positions only (draw_masks)
    return {"loss": -J + beta * kl, "kl": kl.detach(), "elbo": (scale * (lp.detach() * acts).sum(-1)).mean(),
            "token_logp": lp.detach()}


COLLAPSED = 0.5  # distinct share of a group below which finetune warns (the bases here draw 1.0)
KL_JUMP = 2.0  # a step's KL over the highest of the (up to) 20 steps before the last 5: a jump above this ...
KL_RISE = 0.3  # ... and above that highest by this many nats (a run's first steps double a small KL steadily)
KL_STEPS = 3  # ... held for this many steps against the first one's baseline (a one- or two-step spike recovers)
KL_MIN_BASELINE = 5  # steps a baseline needs: a break within a run's first 10 steps is not told from its start


def _kl_baseline(history: list[dict], step: int) -> float | None:
    """The highest KL of the (up to) 20 steps before step - 5 (`step` 1-based), None with too few."""
    if step - 6 < KL_MIN_BASELINE:
        return None
    return max(x["kl"] for x in history[max(0, step - 26):step - 6])


def break_signs(history: list[dict], step: int | None = None) -> str | None:
    """Why the run in `history` (finetune's dicts) looks broken at `step` (1-based; default its last), or None, from
    the steps up to it. Two signs: fewer than COLLAPSED of the group's records are distinct (a GPU run at lr 4e-4,
    floor 4, by step 150: 2%), or the KL per masked position jumped, over KL_JUMP times the highest of the 20 steps
    before the last 5 and KL_RISE nats above it, and stayed there KL_STEPS steps (against the first step's
    baseline). Found on the QED runs of the README: the five that broke are told at steps 144, 146 and 294 (first
    stage; their QED 0.74 -> 0.50, 0.73 -> 0.63, 0.79 -> 0.38), 39 and 20 (second and third stage at lr 4e-4 and
    beta 0.01: 0.82 -> 0.62, 0.83 -> 0.38), and none of the six that held (up to 400 steps). The last 5 steps are
    left out of the baseline because a KL rises over 2-3 steps as it breaks; KL_RISE keeps a run's first steps
    quiet, where a small KL doubles steadily (without it the rule fires at steps 37 and 13 of a second and a third
    stage that learned on); KL_STEPS lets a spike pass (those runs at step 35, 0.15 -> 0.61 and back to 0.42, 0.13,
    and at step 25, 0.09 -> 0.63, 0.65, 0.34: without it the rule fires there)."""
    step = len(history) if step is None else step
    h = history[step - 1]
    if h["unique"] < COLLAPSED:
        return f"only {h['unique']:.0%} of the group's records are distinct"
    first = step - KL_STEPS + 1
    before = _kl_baseline(history, first)  # None for a step too early to have one
    jump = history[first - 1:step]
    if before is not None and all(x["kl"] > KL_JUMP * before and x["kl"] > before + KL_RISE for x in jump):
        kls = ", ".join(f"{x['kl']:.2f}" for x in jump)
        return f"the KL per masked position jumped to {kls} over {KL_STEPS} steps (at most {before:.2f} before)"
    return None


def last_good_step(history: list[dict]) -> int | None:
    """The last step whose weights come before the first break sign in `history` (None: no sign): a sign at step
    s names a KL jump from step s - KL_STEPS + 1 on, and the KL of step j is that of the weights after j - 1 steps,
    so a checkpoint of a step up to s - KL_STEPS - 1 holds weights from before the jump."""
    for s in range(1, len(history) + 1):
        if break_signs(history, s) is not None:
            return max(0, s - KL_STEPS - 1)
    return None


def advantages(rewards: torch.Tensor) -> torch.Tensor:
    """GRPO's group-relative advantages (G,): rewards standardised within the group (all 0 when they agree)."""
    r = rewards.double()
    return ((r - r.mean()) / (r.std(unbiased=False) + 1e-4)).float()


def finetune(model, reward, *, iterations: int = 100, group: int = 32, steps: int | None = None, lr: float = 2e-4,
             beta: float = 0.05, masks: int = 4, inner: int = 4, clip: float = 0.2, seed: int = 0,
             coupled: bool = False, floor: float | None = None, log=None, stop=None, resume: dict | None = None,
             checkpoint=None, checkpoint_every: int = 0, warn=None, sample_options: dict | None = None) -> list[dict]:
    """GRPO on `model` (a masked-diffusion SequenceModel, changed in place): `iterations` groups of `group` records
    sampled with `steps` denoising steps (default the model's sample.steps), each serving `inner` Adam steps.
    reward(tokens (G, L)) -> (G,) (wrap a reward on texts with guidance.value.checked_reward and texts_of).
    Returns one dict per iteration: reward (mean), reward_median, kl and elbo (of the weights that drew the
    group), unique (distinct rows / G), length (mean scored positions a row: the record and its end token).
    stop() -> bool, asked after every step: True ends the run there (Ctrl-C in `ddlm finetune`), the history so
    far returned. warn(line) is called once, at the first step where break_signs sees the run breaking.
    sample_options: how the groups are decoded (model.generate's sampler, planner, planner_options, temperature;
    default the model's own): the records a fine-tuned model is rewarded on are drawn as it will be sampled.

    Resuming exactly: checkpoint(state) is called after every `checkpoint_every`-th step, after the last and after
    a stop, with state = {"step", "backbone", "optimizer", "generator", "history"} (what the next step depends on:
    each group's sampling seed is fixed by the step, the masks come from the generator). finetune(..., resume=
    state) on the same base model continues from there: the frozen reference is the base's weights, taken before
    the state's are loaded, and the steps that follow are the ones an unbroken run takes."""
    require_masked_diffusion(model, "GRPO")
    for name, v in (("iterations", iterations), ("group", group), ("masks", masks), ("inner", inner)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{name} must be a positive whole number, got {v!r}")
    if group < 2:
        raise UserError("GRPO compares records within a group: group must be at least 2")
    if not (lr > 0 and beta >= 0 and clip > 0):
        raise UserError(f"GRPO needs lr > 0, beta >= 0 and clip > 0, got lr={lr}, beta={beta}, clip={clip}")
    if floor is not None and not floor >= 0:
        raise UserError(f"GRPO's floor is nats below the reference's log p: give a number >= 0, got {floor}")
    backbone = model.backbone
    reference = copy.deepcopy(backbone).eval().requires_grad_(False)
    objective = MDLMObjective(model.process, "stratified")
    opt = torch.optim.Adam(backbone.parameters(), lr=lr)
    g = torch.Generator(device=model.device).manual_seed(seed)
    max_length = model.cfg.model.max_len if getattr(model.tokenizer, "eos_id", None) is not None else None
    history = []
    if resume is not None:  # after the reference copied the base
        backbone.load_state_dict(resume["backbone"])
        opt.load_state_dict(resume["optimizer"])
        g.set_state(resume["generator"])
        history = list(resume["history"])

    def state():
        return {"step": len(history), "backbone": backbone.state_dict(), "optimizer": opt.state_dict(),
                "generator": g.get_state(), "history": list(history)}
    warned = False
    was = backbone.training
    backbone.eval()  # no dropout: the records are the sampler's and the ELBO the evaluator's
    try:
        for it in range(len(history), iterations):
            out = model.generate(group, steps=steps, max_length=max_length, seed=seed * 1_000_003 + it,
                                 batch_size=group, decode=False, **(sample_options or {}))
            batch, scored = record_rows(model, out.tokens.to(model.device))
            r = torch.as_tensor(reward(batch.tokens), dtype=torch.float64).reshape(-1)
            finite = torch.isfinite(r)
            if not bool(finite.all()):  # -inf (impossible) records: the group's worst, not an infinity
                r = torch.where(finite, r, r[finite].min() - 1.0 if bool(finite.any()) else torch.zeros_like(r))
            a = advantages(r).to(model.device)
            big, t, xt, w = draw_masks(objective, batch, masks, g, coupled)
            with torch.no_grad():
                ref_logp = token_logp(reference, objective, big, xt, t)[2]  # (N, L, V), frozen: once a group
            scored_copies = scored.repeat(masks, 1)  # (N, L) the positions J counts, copy by copy
            first = None  # the first inner step's terms: the KL and ELBO of the weights that drew the group
            for _ in range(inner):
                terms = policy_loss(backbone, ref_logp, objective, big, t, xt, a, beta,
                                    None if first is None else first["token_logp"], clip, scored_copies, w, floor)
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt.step()
                if first is None:
                    first = terms
            history.append({"reward": round(float(r.mean()), 5),
                            "reward_median": round(statistics.median(r.tolist()), 5),
                            "kl": round(float(first["kl"]), 6), "elbo": round(float(first["elbo"]), 5),
                            "unique": round(len({tuple(row) for row in batch.tokens.tolist()}) / group, 4),
                            "length": round(float(scored.sum(-1).double().mean()), 2)})
            why = None if warn is None or warned else break_signs(history)
            if why is not None:
                warned = True
                warn(f"grpo step {it + 1}: {why}: the run is breaking (README, GRPO); its weights up to step "
                     f"{last_good_step(history)} came before the break, and a lower --lr or a --floor holds a run "
                     "longer")
            if log is not None:
                h = history[-1]
                log(f"grpo {it + 1}/{iterations}: reward mean {h['reward']:.4f} median {h['reward_median']:.4f}, "
                    f"KL {h['kl']:.4f}, unique {h['unique']:.2f}")
            stopping = stop is not None and bool(stop())
            if checkpoint is not None and (stopping or it + 1 == iterations
                                           or (checkpoint_every and (it + 1) % checkpoint_every == 0)):
                checkpoint(state())
            if stopping:
                break
    finally:
        backbone.train(was)
    return history
