"""`SequenceModel`: a backbone, its family (process, objective, sampler) and its tokenizer in one object.

    lm = SequenceModel.from_pretrained("runs/demo")
    out = lm.generate(n=4, length=128, steps=128)
    print(out.texts, out.nfe)
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Iterator

import torch

from .config import RunConfig
from .errors import UserError
from .families import build_family
from .models.hub import load_state, load_weights, save_state
from .models.transformer import Transformer
from .sampling.blockwise import PrefixKVBackbone, check_kv_refresh, sample_blockwise
from .sampling.core import Hooks
from .sampling.loop import SampleOutput, sample_masked
from .sampling.stops import block_ended, cut_at_end, eos_stop


DEFAULT_BATCH_SIZE = 64  # samples per network batch: bounds the (batch, L, V) logits, and small batches run well
TOKEN_BYTES = 8  # a sampled token id (int64)
TEXT_BYTES = 8  # about what a decoded token costs in the Python strings of `texts` (a char or a few, overhead)
PROCESS_BETAS = "ddlm_process.betas"  # the betas (T,) of a D3PM process in model.safetensors
COMPILE_BACKEND = "inductor"  # torch.compile's default; the tests swap in dynamo's "eager" to skip C++ builds
STEER_KEYS = ("cond", "guidance", "reward", "svdd_candidates", "svdd_alpha", "smc_particles", "smc_alpha")


class SequenceModel(torch.nn.Module):
    """A trained (or fresh) ddlm model: `backbone(x_t, t) -> logits`, `family`, `tokenizer`, `cfg`."""

    def __init__(self, cfg: RunConfig, tokenizer):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.family = build_family(cfg.process, tokenizer.vocab_size)
        self.backbone = Transformer(cfg.model, self.family.process.n_states, causal=self.family.causal)
        # (L + 1,) counts of the training records' lengths (record + <eos>) of a data.padding=skip model, whose
        # max_length sampling draws each length first (sampling/lengths.py); None for every other model
        self.length_counts: torch.Tensor | None = None

    @property
    def process(self):
        return self.family.process

    @property
    def device(self):
        return next(self.backbone.parameters()).device

    # ---- save / load -------------------------------------------------------------------------------------
    def save_pretrained(self, directory) -> None:
        """config.json, model.safetensors (the backbone's weights, and a D3PM process's betas under
        PROCESS_BETAS so that loading need not solve its schedule again) and tokenizer.json."""
        meta, state = {"config": self.cfg.to_dict()}, dict(self.backbone.state_dict())
        if hasattr(self.process, "schedule_key"):
            meta["process_betas_key"] = self.process.schedule_key()
            state[PROCESS_BETAS] = self.process.betas
        if self.length_counts is not None:
            meta["length_counts"] = [int(c) for c in self.length_counts]
        save_state(directory, meta, state, self.tokenizer)

    @classmethod
    def from_pretrained(cls, directory, map_location: str = "cpu") -> "SequenceModel":
        """Load a save_pretrained directory, or a run directory (its exported `model/`)."""
        from .data.tokenizers import load_tokenizer

        directory = Path(directory)
        if not directory.exists():
            raise UserError(f"model directory {directory} does not exist")
        if (directory / "model" / "config.json").is_file():
            directory = directory / "model"
        elif not (directory / "config.json").is_file() and (directory / "checkpoints").is_dir():
            raise UserError(f"run {directory} has checkpoints but no exported model yet; "
                            f"resume it with `ddlm train --resume {directory}` to finish or export it")
        meta, state = load_state(directory)
        betas = state.pop(PROCESS_BETAS, None)
        if betas is not None and isinstance(meta.get("process_betas_key"), str):
            from .processes.d3pm import remember_betas

            remember_betas(meta["process_betas_key"], betas)  # used only by a process with that exact key
        data = meta["config"].get("data")
        if isinstance(data, dict) and data.get("records") not in (None, "none", "") and "padding" not in data:
            # a records model saved before data.padding was written out was trained with the old default
            meta["config"]["data"] = dict(data, padding="learn")
        model = cls(RunConfig.from_dict(meta["config"]), load_tokenizer(directory))
        load_weights(model.backbone, state, directory)
        if isinstance(meta.get("length_counts"), list):
            model.length_counts = torch.tensor(meta["length_counts"], dtype=torch.long)
        return model.to(map_location).eval()

    def draws_lengths(self) -> bool:
        """True for a masked model trained on records with data.padding=skip: `max_length` sampling draws each
        sample's length from the training lengths first (sampling/lengths.py)."""
        from .data.record_data import learns_padding, uses_records

        return (not self.family.causal and uses_records(self.cfg.data)
                and not learns_padding(self.cfg, self.tokenizer.vocab_size))

    def length_probs(self) -> torch.Tensor:
        """p(n) (max_len + 1,) of a draws_lengths model: its saved training lengths, smoothed (the
        prior `ddlm eval` charges its bound for). A model saved without them counts its training data again."""
        from .sampling.lengths import prior_probs

        if self.length_counts is None:
            from .data.record_data import training_lengths

            self.length_counts = torch.bincount(training_lengths(self.cfg, self.tokenizer).long(),
                                                minlength=self.cfg.model.max_len + 1)
        return prior_probs(self.length_counts, self.cfg.model.max_len)

    # ---- text <-> tokens ---------------------------------------------------------------------------------
    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer.encode(text), dtype=torch.long)

    def decode(self, tokens) -> str:
        return self.tokenizer.decode([int(i) for i in tokens])

    # ---- sampling ----------------------------------------------------------------------------------------
    def generate(self, n: int = 1, length: int | None = None, steps: int | None = None, *,
                 sampler: str | None = None, planner: str | None = None, temperature: float | None = None,
                 prompt: str | None = None, fixed=None, fixed_mask=None, stride: int | None = None,
                 seed: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, kv_cache: bool = False,
                 kv_refresh: int = 0, compile: bool = False, progress: bool = False,
                 decode: bool = True, planner_options: dict | None = None, max_length: int | None = None,
                 infill: str | None = None, span_lengths=None, cond=None, guidance: float | None = None,
                 reward=None, svdd_candidates: int | None = None, svdd_alpha: float | None = None,
                 smc_particles: int | None = None, smc_alpha: float | None = None, observer=None) -> SampleOutput:
        """Sample n sequences, `batch_size` at a time (one generator runs through the batches, so a seed
        reproduces a sample at the same batch size). Random unless `seed` is given; `out.seed` is the seed used.

        prompt: a text prefix. fixed: token ids (L,) shared by every sample, or (n, L) one row per sample, with
        fixed_mask of the same shape (True = keep this token); without fixed_mask, entries < 0 mark the free
        positions (fixed=[5, -1, -1, 7]). A prompt and fixed positions combine (they must agree where both fix
        a position). length defaults to fixed's length, else the context. Lengths beyond the context are
        generated in sliding blocks (`stride` new tokens per block, half the context by default).
        steps are capped at the number of positions left to decode (per block) where a decoded token stays
        decoded (mdlm's ancestral, cached and planned samplers, d3pm-absorbing, rdm-* without re-noising): more
        steps would only add network calls that decode nothing. ReMDM re-masking and RDM routing that re-noises
        (routing_condition cond/uncond) keep every step: there a step may revise a token.

        planner_options: options of the planner (sampler planned: {"gumbel": 0.5} for top_prob/top_margin/
        entropy, {"threshold": 0.8} for confidence, {"schedule": "cosine"} for any) or of the remask sampler
        ({"schedule": "cap", "eta": 0.05, ...}); an unknown key is a UserError naming the valid ones. None
        takes the model's sample.planner_options when the sampler and planner are the model's own, else none.

        kv_cache (masked diffusion only): in each sliding block after the first, the finished prefix goes
        through the network once (the block's first step) and its keys/values are reused by the later steps,
        which run only the block's tokens (an approximation, see sampling.blockwise.PrefixKVBackbone);
        `kv_refresh` N > 0 recomputes them every N network calls. No effect within the context (one window,
        no finished prefix).

        compile: run the backbone under torch.compile (compiled once per model and kept; the first call pays
        the compilation, tens of seconds on a CPU). It paid 1.14x and 1.31x (two runs) for ancestral sampling at
        8 x 128 x 128 on a 2-core CPU (benchmarks/sampling.py --compile), so it is for long sampling jobs, off by
        default.

        max_length (a model trained on records, whose tokenizer has <eos>): texts of their own lengths, each cut
        at its first <eos> within max_length tokens (sampling.stops); `out.lengths` (n,) counts their tokens. A
        row with no <eos> within max_length is drawn again (up to sampling.stops.REDRAWS times, NFE counted).
        A data.padding=skip model (the records default) does this by itself when neither length, prompt nor fixed
        is given: max_length is then its context, and each sample's length is drawn from the training lengths.
        infill: a text with [MASK] (a span of unknown length, tried at each of `span_lengths`, default 1..32,
        the length most likely under the model's bound kept) or [MASK:k] (k tokens); see ddlm.infill.

        Steering (ddlm.guidance): cond, a class label (or (n,) labels) of a model with model.n_classes > 0;
        guidance, the classifier-free guidance scale w (0 unconditional, 1 conditional; each step then runs the
        network twice, both counted in NFE); reward, a callable on the decoded texts -> (n,) floats, a name
        (qed, logp, logp_range, sa, valid) or module:function, steering with SVDD (svdd_candidates M per step,
        svdd_alpha, default 0 = keep the best) or SMC (smc_particles K per sample, smc_alpha, default 0.1);
        their value calls count in NFE and row_evals.
        observer: called with every intermediate sampling state (the core's observer hook, `sampling.core`);
        `stream()` builds on it."""
        if infill is not None:
            from .infill import generate_infill

            return generate_infill(self, infill, span_lengths, n=n, steps=steps, sampler=sampler, planner=planner,
                                   temperature=temperature, seed=seed, batch_size=batch_size, decode=decode,
                                   planner_options=planner_options, length=length, prompt=prompt, fixed=fixed,
                                   max_length=max_length)
        req = self._request(n, length, steps, sampler, planner, temperature, prompt, fixed, fixed_mask, stride,
                            seed, batch_size, kv_cache, kv_refresh, decode, keep_all=True,
                            planner_options=planner_options, max_length=max_length)
        self._steer(req, dict(cond=cond, guidance=guidance, reward=reward, svdd_candidates=svdd_candidates,
                              svdd_alpha=svdd_alpha, smc_particles=smc_particles, smc_alpha=smc_alpha))
        req["observer"] = observer
        parts = list(self._batches(req, compile, progress, decode))
        out = SampleOutput(torch.cat([p.tokens for p in parts]), sum(p.nfe for p in parts),
                           sum(p.row_evals for p in parts), sum(p.seconds for p in parts))
        out.texts = [t for p in parts for t in p.texts] if decode else None
        out.lengths = torch.cat([p.lengths for p in parts]) if req["stops"] else None
        out.seed = req["seed"]
        return out

    def iter_generate(self, n: int = 1, length: int | None = None, steps: int | None = None, *,
                      batch_size: int = DEFAULT_BATCH_SIZE, compile: bool = False, progress: bool = False,
                      decode: bool = True, **options) -> Iterator[SampleOutput]:
        """`generate` one batch at a time: yields a SampleOutput per batch of at most `batch_size` samples
        (same options, same samples as `generate` with the same seed and batch size), so that a caller can
        write samples out as they come and never hold all of them. The arguments are checked at the call,
        before the first batch."""
        known = {"sampler", "planner", "temperature", "prompt", "fixed", "fixed_mask", "stride", "seed",
                 "kv_cache", "kv_refresh", "planner_options", "max_length", "observer"} | set(STEER_KEYS)
        if set(options) - known:
            raise TypeError(f"iter_generate() got unexpected keyword arguments {sorted(set(options) - known)}")
        o = {k: options.get(k) for k in known}
        req = self._request(n, length, steps, o["sampler"], o["planner"], o["temperature"], o["prompt"],
                            o["fixed"], o["fixed_mask"], o["stride"], o["seed"], batch_size, bool(o["kv_cache"]),
                            o["kv_refresh"] or 0, decode, keep_all=False, planner_options=o["planner_options"],
                            max_length=o["max_length"])
        self._steer(req, {k: o[k] for k in STEER_KEYS})
        req["observer"] = o["observer"]
        return self._batches(req, compile, progress, decode)

    def stream(self, n: int = 1, length: int | None = None, steps: int | None = None, **options):
        """The steps of `generate` as they happen: an iterator of `sampling.stream.Step` (tokens, still-masked
        and newly committed positions, confidence, NFE, time) ending with a `final` step whose tokens and texts
        are generate's for the same seed; a worker thread samples, and closing the iterator stops it."""
        from .sampling.stream import stream_generate

        return stream_generate(self, n, length, steps, **options)

    def _steer(self, req: dict, steer: dict) -> None:
        """req["steer"]: labels, guidance, SVDD or SMC checked once (guidance/steer.py), or None if none asked."""
        req["steer"] = None
        if any(v is not None for v in steer.values()):
            from .guidance.steer import Steering

            req["steer"] = Steering(self, req["n"], req["opts"], kv_cache=req["kv_cache"], stops=req["stops"],
                                    prompted=req["fixed"] is not None, **steer)

    def _request(self, n, length, steps, sampler, planner, temperature, prompt, fixed, fixed_mask, stride, seed,
                 batch_size, kv_cache, kv_refresh, decode, keep_all, planner_options=None, max_length=None) -> dict:
        """Every argument checked once, before any sampling: a mistake is a one-line UserError."""
        from .sampling import options as sampling_options
        from .sampling.stops import check_max_length

        _check_count(n, "n (the number of samples)")
        _check_count(batch_size, "batch_size")
        if length is not None:
            _check_count(length, "length")
        if (max_length is None and length is None and prompt is None and fixed is None
                and self.draws_lengths()):
            # a data.padding=skip model is p(x | n): a window of the full context without its <eos> would be a
            # record of that one length, so by default each sample draws its own (texts of their own lengths)
            max_length = self.cfg.model.max_len
        if max_length is not None:
            length = check_max_length(self.tokenizer, max_length, length)
        sc = self.cfg.sample
        fixed, fixed_mask, length = self._fixed_positions(n, length, prompt, fixed, fixed_mask)
        context = self.cfg.model.max_len
        if length > context and self.cfg.model.positions == "grid":
            raise UserError(f"a grid model generates exactly {context} tokens; got length {length}")
        self._check_kv_cache(kv_cache, kv_refresh)
        check_memory(n if keep_all else 0, length, min(batch_size, n), min(length, context),
                     self.process.n_states, decode)
        steps = steps if steps is not None else sc.steps
        _check_count(steps, "steps")
        temperature = sc.temperature if temperature is None else temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 100:
            raise UserError(f"temperature must be in [0, 100], got {temperature!r}")
        sampler, planner = sampler or sc.sampler, planner or sc.planner
        if planner_options is None:  # the model's own options belong to its own sampler and planner
            own = sampler == sc.sampler and (sampler != "planned" or planner == sc.planner)
            planner_options = dict(sc.planner_options) if own else {}
        elif not isinstance(planner_options, dict) or not all(isinstance(k, str) for k in planner_options):
            raise UserError(f"planner_options must be a dict of option names to values, got {planner_options!r}")
        opts = sampling_options(self.family, sampler, planner, steps, temperature, planner_options=planner_options)
        return {"n": n, "length": length, "fixed": fixed, "fixed_mask": fixed_mask, "stride": stride,
                "seed": draw_seed() if seed is None else _check_seed(seed), "batch_size": batch_size,
                "kv_cache": kv_cache, "kv_refresh": kv_refresh, "opts": opts, "stops": max_length is not None}

    def _batches(self, req, compile, progress, decode) -> Iterator[SampleOutput]:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(req["seed"])
        was_training = self.backbone.training
        self.backbone.eval()
        backbone = self._compiled_backbone() if compile else self.backbone
        n, size = req["n"], req["batch_size"]
        try:
            for start in range(0, n, size):
                b = min(size, n - start)
                if req.get("steer") is not None:  # its labels and draws for this batch
                    req["steer"].begin(start, generator)
                fixed, mask = req["fixed"], req["fixed_mask"]
                if fixed is not None and fixed.shape[0] > 1:  # one row per sample: this batch's rows
                    fixed, mask = fixed[start: start + b], mask[start: start + b]
                out = self._sample_batch(backbone, b, req, fixed, mask, generator, progress)
                if req["stops"] and req.get("steer") is None:  # records end within max_length (sampling/stops)
                    self._redraw_unended(out, backbone, req, fixed, mask, generator, progress)
                out.seed = req["seed"]
                if req["stops"]:  # <pad> after each row's first <eos>; its length in tokens
                    tok = self.tokenizer
                    out.tokens, out.lengths = cut_at_end(out.tokens, tok.eos_id, tok.pad_id, (tok.bos_id,))
                if decode:
                    out.texts = [self.decode(row) for row in out.tokens]
                yield out
        finally:
            self.backbone.train(was_training)

    def _redraw_unended(self, out, backbone, req, fixed, fixed_mask, generator, progress) -> None:
        """Draw again, up to REDRAWS times, the rows of `out` with no end token within max_length, in place
        (tokens, NFE, row evaluations, seconds): the rows become samples conditioned on ending in the window.
        Steered runs keep their rows (their labels and particles belong to whole batches)."""
        from .sampling.stops import REDRAWS, unended

        tok = self.tokenizer
        for _ in range(REDRAWS):
            rows = unended(out.tokens, tok.eos_id, tok.pad_id).nonzero()[:, 0]  # (r,)
            if len(rows) == 0:
                return
            f, m = fixed, fixed_mask
            if f is not None and f.shape[0] > 1:  # one row per sample: those rows' own
                f, m = f[rows.to(f.device)], m[rows.to(m.device)]
            again = self._sample_batch(backbone, len(rows), req, f, m, generator, progress)
            out.tokens[rows.to(out.tokens.device)] = again.tokens.to(out.tokens.device)
            out.nfe += again.nfe
            out.row_evals += again.row_evals
            out.seconds += again.seconds

    def _sample_batch(self, backbone, n, req, fixed, fixed_mask, generator, progress) -> SampleOutput:
        """b samples: fixed / fixed_mask (1 or b, L) or None."""
        length, opts, kv_cache, kv_refresh = req["length"], req["opts"], req["kv_cache"], req["kv_refresh"]
        eos = self.tokenizer.eos_id if req["stops"] else None
        if eos is not None and not _revisits(opts):  # a row that has its <eos> is finished (sampling.stops)
            opts = dict(opts, hooks=Hooks(stop=eos_stop(eos)))
        if req.get("observer") is not None:  # every step to the observer (display, stream)
            from .sampling.stream import attach_observer

            opts = dict(opts, hooks=attach_observer(opts.get("hooks"), req["observer"]))
        if self.family.causal:
            prompts = [None] if fixed is None else fixed[:, : int(fixed_mask[0].sum())]  # (1 or b, P) prefixes
            if len(prompts) > 1 and (prompts == prompts[:1]).all():
                prompts = prompts[:1]
            if len(prompts) == 1:
                return self.family.sample(backbone, self.process, n, length, prompt=prompts[0],
                                          generator=generator, progress=progress, **opts)
            # the AR sampler continues one prompt (P,): rows with prompts of their own are sampled one by one
            rows = [self.family.sample(backbone, self.process, 1, length, prompt=p, generator=generator,
                                       progress=progress, **opts) for p in prompts]
            return SampleOutput(torch.cat([r.tokens for r in rows]), sum(r.nfe for r in rows),
                                sum(r.row_evals for r in rows), sum(r.seconds for r in rows))
        if length <= self.cfg.model.max_len and self.draws_lengths():
            fixed, fixed_mask, backbone = self._length_given(backbone, n, length, fixed, fixed_mask, eos, generator)
        capped = _decodes_positions(self.process) and not _revisits(opts)

        def window(n_, length_, fixed_, mask_, prefix=0):
            net = backbone
            if kv_cache and prefix:
                net = PrefixKVBackbone(backbone, prefix, n_, kv_refresh)
            o = dict(opts)
            if capped and "steps" in o:  # a step that can decode nothing is a wasted network call
                todo = length_ if mask_ is None else int((~mask_.bool()).sum(-1).max())
                o["steps"] = max(1, min(o["steps"], todo))
            if req.get("steer") is not None:  # labels, guidance, SVDD or SMC: its backbone, hooks, particles
                return req["steer"].sample(lambda net_, rows, f, m, hooks: self.family.sample(
                    net_, self.process, rows, length_, fixed=f, fixed_mask=m, generator=generator,
                    progress=progress, **dict(o, hooks=hooks)), net, n_, fixed_, mask_, o.get("hooks"))
            return self.family.sample(net, self.process, n_, length_, fixed=fixed_,
                                      fixed_mask=mask_, generator=generator, progress=progress, **o)
        context = self.cfg.model.max_len
        if length <= context:
            return window(n, length, fixed, fixed_mask)
        stride = req["stride"] or context // 2
        return sample_blockwise(window, n, length, context, stride, fixed, fixed_mask,
                                stop=None if eos is None else block_ended(eos))

    def _length_given(self, backbone, n, length, fixed, fixed_mask, eos, generator):
        """A data.padding=skip model is p(x | n) (sampling/lengths.py): each row's length comes from a given
        <eos> (an infill layout), else it is drawn from the training lengths (max_length: `eos` set), <eos>
        and <pad> written after it; the backbone then never attends to the <pad> nor draws a special token.
        Returns (fixed, fixed_mask, backbone), unchanged where neither applies (a fixed-length sample)."""
        from .sampling.lengths import KeyPadded, draw_lengths, length_window, min_lengths
        from .sampling.stops import first_end

        tok = self.tokenizer
        if fixed is not None and tok.eos_id is not None:
            given_end = first_end(torch.where(fixed_mask.bool(), fixed, -1), (tok.eos_id,))  # (1 or n,)
        else:
            given_end = None
        if given_end is not None and bool((given_end < length).all()):
            lengths = (given_end + 1).expand(n).cpu()
        elif eos is not None:
            lengths = draw_lengths(self.length_probs(), n, length, min_lengths(n, fixed_mask), generator)
        else:
            return fixed, fixed_mask, backbone
        fixed, fixed_mask, keys = length_window(lengths, length, tok.eos_id, tok.pad_id,
                                                None if fixed is None else fixed.cpu(),
                                                None if fixed_mask is None else fixed_mask.cpu())
        banned = [i for i in (tok.eos_id, tok.pad_id, getattr(tok, "bos_id", None)) if i is not None]
        return (fixed.to(self.device), fixed_mask.to(self.device),
                KeyPadded(backbone, keys.to(self.device), banned=banned))

    def _compiled_backbone(self):
        """torch.compile of the backbone, built on first use and kept outside the module tree (so it never
        enters state_dict or save_pretrained). dynamic=True: the row cache changes the batch size."""
        compiled = self.__dict__.get("_compiled")
        if compiled is None:
            compiled = torch.compile(self.backbone, dynamic=True, backend=COMPILE_BACKEND)
            self.__dict__["_compiled"] = compiled
        return compiled

    def _check_kv_cache(self, kv_cache, kv_refresh):
        check_kv_refresh(kv_refresh)
        if kv_refresh and not kv_cache:
            raise UserError("kv_refresh only applies with the prefix KV cache; add kv_cache=True (--kv-cache)")
        if not kv_cache:
            return
        if self.family.causal:
            raise UserError("the ar family already samples with its own KV cache; drop kv_cache (--kv-cache)")
        if self.family.sample is not sample_masked:
            raise UserError(f"the prefix KV cache works with the masked-diffusion sampler (mdlm); the "
                            f"{self.family.name} family samples with its own loop; drop kv_cache (--kv-cache)")

    def _fixed_positions(self, n, length, prompt, fixed, fixed_mask):
        """-> fixed (1 or n, L) long, fixed_mask (1 or n, L) bool (or None, None), and the length L."""
        if fixed is None and fixed_mask is not None:
            raise UserError("fixed_mask was given without fixed; pass the tokens too (fixed=...)")
        if fixed is not None:
            fixed = _as_tensor(fixed, "fixed")
            if fixed.dtype == torch.bool or fixed.is_floating_point() or fixed.is_complex():
                raise UserError(f"fixed must hold integer token ids, got dtype {fixed.dtype}")
            if fixed_mask is None:
                fixed_mask = fixed >= 0  # entries < 0 (e.g. -1) mark the positions to generate
            else:
                fixed_mask = _as_tensor(fixed_mask, "fixed_mask")
                if fixed_mask.dtype != torch.bool and not bool(((fixed_mask == 0) | (fixed_mask == 1)).all()):
                    raise UserError("fixed_mask must be booleans (True = keep the token of fixed), or 0/1")
                fixed_mask = fixed_mask.bool()
            fixed, fixed_mask = _rows(fixed, "fixed", n), _rows(fixed_mask, "fixed_mask", n)
            if fixed.shape[1] != fixed_mask.shape[1]:
                raise UserError(f"fixed has {fixed.shape[1]} positions but fixed_mask has {fixed_mask.shape[1]}; "
                                "give both the same length")
            if length is not None and length != fixed.shape[1]:
                raise UserError(f"fixed has {fixed.shape[1]} positions but length is {length}; drop length "
                                "(it is taken from fixed) or give fixed of that length")
            length = fixed.shape[1]
            rows = max(fixed.shape[0], fixed_mask.shape[0])
            fixed_mask = fixed_mask.expand(rows, length).clone()
            # free positions hold a placeholder 0 (the samplers never read them)
            fixed = torch.where(fixed_mask, fixed.long().expand(rows, length), torch.zeros((), dtype=torch.long))
        length = length or self.cfg.model.max_len
        if prompt:
            if not isinstance(prompt, str):
                raise UserError(f"prompt must be a text (str), got {type(prompt).__name__}; use fixed= for token ids")
            ids = self.encode(prompt)
            if len(ids) > length:
                raise UserError(f"the prompt has {len(ids)} tokens but the length is {length}; "
                                "use a longer --length or a shorter prompt")
            if fixed is None:
                fixed = torch.zeros(1, length, dtype=torch.long)
                fixed_mask = torch.zeros(1, length, dtype=torch.bool)
            P = len(ids)
            clash = fixed_mask[:, :P] & (fixed[:, :P] != ids)  # (rows, P)
            if clash.any():
                row, pos = (int(i) for i in clash.nonzero()[0])
                raise UserError(f"the prompt and fixed disagree at position {pos} (prompt token {int(ids[pos])}, "
                                f"fixed token {int(fixed[row, pos])}); free that position in fixed_mask or "
                                "change the prompt")
            fixed[:, :P], fixed_mask[:, :P] = ids, True
        if fixed is None:
            return None, None, length
        if self.family.causal and not _is_prefix(fixed_mask):
            raise UserError("an autoregressive model can only continue a prefix; use a diffusion model to infill")
        given = fixed[fixed_mask]
        if ((given < 0) | (given >= self.tokenizer.vocab_size)).any():
            raise UserError(f"fixed tokens must be in 0..{self.tokenizer.vocab_size - 1}")
        return fixed, fixed_mask, length


def _decodes_positions(process) -> bool:
    """Families whose sampler turns noisy positions into final tokens one way (absorbing [MASK], or RDM's
    routing): with more steps than positions some steps decode nothing."""
    from .objectives.rdm import RDMProcess

    return getattr(process, "mask_id", None) is not None or isinstance(process, RDMProcess)


def _revisits(opts: dict) -> bool:
    """Samplers that may return a decoded token to noise (ReMDM re-masking, RDM routing that re-noises):
    for them steps beyond the positions are more chances to revise, so they are not capped."""
    renoising_route = opts.get("route") in ("deterministic", "stochastic") and opts.get("condition") != "none"
    return opts.get("rule") == "remask" or renoising_route


def memory_bytes() -> int:
    """This machine's physical memory (8 GiB where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def check_memory(n_kept: int, length: int, batch: int, window: int, n_states: int, decode: bool) -> None:
    """Refuse, with one line, a request whose result (n_kept x length tokens, and their texts) or whose
    per-batch working memory (a few float32 (batch, window, n_states) tensors) cannot fit in half the memory."""
    limit = memory_bytes() // 2
    result = n_kept * length * (TOKEN_BYTES + (TEXT_BYTES if decode else 0))
    if result > limit:
        raise UserError(f"{n_kept} samples x {length} tokens need about {result / 2**30:.1f} GiB for the result, more "
                        f"than half of this machine's {2 * limit / 2**30:.1f} GiB; ask for fewer samples (`ddlm "
                        "sample` without --json writes them batch by batch and keeps none)")
    work = 4 * batch * window * n_states * 4
    if work > limit:
        raise UserError(f"a batch of {batch} samples x {window} tokens needs about {work / 2**30:.1f} GiB of working "
                        f"memory, more than half of this machine's {2 * limit / 2**30:.1f} GiB; use a smaller "
                        "batch size (--batch-size)")


def draw_seed() -> int:
    """A fresh random seed in 0..2^31 - 1 (from the OS; the global torch generator is left alone)."""
    return secrets.randbelow(2**31)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise UserError(f"seed must be a whole number in 0..2^63 - 1, got {seed!r}")
    return seed


def _check_count(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive whole number, got {value!r}")


def _as_tensor(value, what: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(value).cpu()
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{what} must be a tensor or a list of token ids ({str(e).splitlines()[0]})") from None
    if t.dim() not in (1, 2) or t.shape[-1] == 0:
        raise UserError(f"{what} must have shape (L,) or (n, L), got {tuple(t.shape)}")
    return t


def _rows(t: torch.Tensor, what: str, n: int) -> torch.Tensor:
    """(L,) or (1 or n, L) -> (1 or n, L): one row shared by every sample, or one row per sample."""
    t = t[None] if t.dim() == 1 else t
    if t.shape[0] not in (1, n):
        raise UserError(f"{what} has {t.shape[0]} rows but n is {n}; give one row (shared by every sample) or "
                        f"{n} rows (one per sample)")
    return t


def _is_prefix(mask: torch.Tensor) -> bool:
    n = mask.sum(-1, keepdim=True)
    return bool((mask == (torch.arange(mask.shape[-1]) < n)).all() and (n == n[0]).all())
