"""What `SequenceModel.generate` needs to steer a run: labels, classifier-free guidance, SVDD or SMC.

`Steering` checks the request once (one-line UserErrors), then for each batch of samples wraps the backbone
(`Conditioned`), builds the hooks (`ClassifierFreeGuidance`, `SVDDProposer`, `SMCProposer`), runs the
family's sampler on K particles per sample for SMC, keeps one per sample and adds the extra network calls
(guidance's null-label pass, the value calls) to the run's NFE and row evaluations.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..sampling.core import Hooks
from .cfg import ClassifierFreeGuidance, check_scale
from .conditions import NULL_LABEL, Conditioned, check_labels
from .smc import SMCProposer
from .svdd import SVDDProposer
from .value import PredictedReward, check_alpha

SVDD_ALPHA = 0.0  # keep the best candidate (SVDD's alpha -> 0 limit, the paper's default)
SMC_ALPHA = 0.1  # target p exp(r / 0.1): a reward in [0, 1] (QED) reweights by up to e^10
STEERABLE_RULES = ("ancestral", "planned")  # masked rules that draw the committed tokens with `where`


def _count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive whole number, got {value!r}")
    return value


class Steering:
    """A checked steering request for n samples of `model` (a SequenceModel) sampled with options `opts`."""

    def __init__(self, model, n: int, opts: dict, *, cond=None, guidance=None, reward=None, svdd_candidates=None,
                 svdd_alpha=None, smc_particles=None, smc_alpha=None, kv_cache: bool = False, stops: bool = False,
                 prompted: bool = False):
        from ..sampling.d3pm import sample_d3pm
        from ..sampling.loop import sample_masked
        from .rewards import resolve_reward

        self.model, self.family = model, model.family
        self.labels = None if cond is None else check_labels(cond, n, model.cfg.model.n_classes,
                                                             model.cfg.model.class_names)
        self.w = None if guidance is None else check_scale(guidance)
        # guidance without a label guides towards the prompt: the unconditional pass sees it masked
        self.prompt_guided = guidance is not None and self.labels is None
        if self.prompt_guided and not prompted:
            raise UserError("guidance needs something to guide towards: a class label (cond=LABEL, --cond LABEL) "
                            "or a prompt (prompt=TEXT, --prompt TEXT: prompt guidance)")
        if self.prompt_guided and (self.family.causal or getattr(model.process, "mask_id", None) is None):
            raise UserError("prompt guidance masks the prompt in its second pass: it needs a family with a "
                            "[MASK] token (mdlm, d3pm-absorbing, rdm-absorbing)")
        self.M = None if svdd_candidates is None else _count(svdd_candidates, "svdd_candidates (--svdd)")
        self.K = None if smc_particles is None else _count(smc_particles, "smc_particles (--smc)")
        self.svdd_alpha = check_alpha(SVDD_ALPHA if svdd_alpha is None else svdd_alpha, "svdd_alpha")
        self.smc_alpha = check_alpha(SMC_ALPHA if smc_alpha is None else smc_alpha, "smc_alpha")
        if (svdd_alpha is not None and self.M is None) or (smc_alpha is not None and self.K is None):
            raise UserError("svdd_alpha goes with svdd_candidates (--svdd), smc_alpha with smc_particles (--smc)")
        if self.K is not None and self.smc_alpha == 0:
            raise UserError("smc_alpha must be > 0 (the target is p(x) exp(reward / alpha)), got 0")
        if self.M is not None and self.K is not None:
            raise UserError("choose one reward-guided decoder: svdd_candidates (--svdd) or smc_particles (--smc)")
        if reward is None and (self.M or self.K):
            raise UserError("SVDD and SMC need a reward; give reward= (--reward NAME or module:function)")
        if reward is not None and not (self.M or self.K):
            raise UserError("a reward steers only with a decoder; add svdd_candidates=M (--svdd M) or "
                            "smc_particles=K (--smc K)")
        self.reward, self.reward_name = (None, None) if reward is None else resolve_reward(reward)
        if self.active and self.family.causal:
            raise UserError("labels, guidance and reward-guided decoding work with the diffusion families; the "
                            "ar family samples left to right without these hooks")
        if self.K is not None and stops:
            raise UserError("SMC resamples whole rows, which finished rows (max_length, or a data.padding=skip "
                            "model's drawn lengths) may not change; give a fixed length or use svdd_candidates (--svdd)")
        if self.active and kv_cache:
            raise UserError("the prefix KV cache is not combined with labels, guidance or reward-guided decoding; "
                            "drop kv_cache (--kv-cache)")
        if self.reward is not None:
            planner = opts.get("planner")
            if (self.family.sample is not sample_masked or opts.get("rule") not in STEERABLE_RULES
                    or getattr(planner, "needs_candidates", False)):
                raise UserError("SVDD and SMC steer the masked-diffusion samplers ancestral, cached and planned "
                                "(a planner that scores proposals excepted); choose one of them (--sampler)")
        self.time_of = (lambda s: s.t / self.model.process.steps) if self.family.sample is sample_d3pm else None
        self.extra_nfe = self.extra_rows = 0
        self._start, self._generator = 0, None

    @property
    def active(self) -> bool:
        return self.labels is not None or self.reward is not None or self.prompt_guided

    def begin(self, start: int, generator) -> None:
        """The next windows sample the batch whose first sample is `start`, with the run's generator."""
        self._start, self._generator = start, generator

    def sample(self, run, backbone, n: int, fixed, fixed_mask, base: Hooks | None = None):
        """run(backbone, rows, fixed, fixed_mask, hooks) -> SampleOutput samples `rows` sequences; returns the
        batch's n samples with the extra network calls counted. base: the caller's hooks (stop, observer)."""
        K = self.K or 1
        rows = n * K
        if K > 1 and fixed is not None and fixed.shape[0] > 1:  # one row per sample: K copies of each
            fixed, fixed_mask = fixed.repeat_interleave(K, 0), fixed_mask.repeat_interleave(K, 0)
        net, extras = backbone, []
        hooks = Hooks(stop=base.stop, observer=base.observer) if base is not None else Hooks()
        guided, hide = False, None  # the second, unconditional pass: the null label's, or the prompt's unseen
        if self.labels is not None and self.w != 0.0:  # w = 0 is the unconditional model: the null label
            labels = self.labels[self._start: self._start + n].repeat_interleave(K)
            net = Conditioned(backbone, labels)
            guided = self.w is not None
        elif self.prompt_guided and fixed_mask is not None:
            # the prompt: given positions, not the <eos>/<pad> of a record's layout; (1 or rows, L), since fixed
            # was repeated for K particles above
            tok = self.model.tokenizer
            ends = [i for i in (getattr(tok, "eos_id", None), getattr(tok, "pad_id", None)) if i is not None]
            hide = fixed_mask.bool() & ~torch.isin(fixed, torch.tensor(ends, device=fixed.device))
            guided = True
        if guided and self.w != 1.0:  # w = 1: the conditional (or prompted) sampler as it is
            cfg = ClassifierFreeGuidance(backbone, self.model.process, self.w, self.time_of, hide=hide)
            hooks.logits_transform = cfg
            extras.append(cfg)
        smc = None
        if self.reward is not None:
            value = PredictedReward(net, self.model.process, self._on_tokens, self.reward_name)
            extras.append(value)
            if self.M is not None:
                hooks.propose = SVDDProposer(value, self.M, self.svdd_alpha, self._generator)
            else:
                smc = hooks.propose = SMCProposer(value, K, self.smc_alpha, self._generator)
        out = run(net, rows, fixed, fixed_mask, hooks)
        if smc is not None:
            out.tokens = smc.select(out.tokens)
        out.nfe += sum(e.nfe for e in extras)
        out.row_evals += sum(e.row_evals for e in extras)
        return out

    def _on_tokens(self, tokens: torch.Tensor):
        """The reward of token rows (N, L), through their decoded texts."""
        return self.reward(texts_of(self.model, tokens))


def texts_of(model, tokens: torch.Tensor) -> list[str]:
    """Decoded rows (N, L); a record (a tokenizer with <eos>) ends at its first <eos>: what follows is not
    part of it. A molecules model's rows are read as SMILES (decoded from SELFIES where it was trained on
    SELFIES records), which is what the molecule rewards score."""
    if getattr(model.cfg.data, "source", None) == "moses":
        from ..tasks.molecules.score import sampled_smiles

        return sampled_smiles(model, tokens)
    eos = getattr(model.tokenizer, "eos_id", None)
    texts = []
    for row in tokens.cpu():
        if eos is not None:
            ends = (row == eos).nonzero()
            row = row[: int(ends[0])] if len(ends) else row
        texts.append(model.decode(row))
    return texts


__all__ = ["Steering", "NULL_LABEL", "texts_of"]
