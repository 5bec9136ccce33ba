"""`SequenceModel`: a backbone, its family (process, objective, sampler) and its tokenizer in one object.

    lm = SequenceModel.from_pretrained("runs/demo")
    out = lm.generate(n=4, length=128, steps=128)
    print(out.texts, out.nfe)
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import RunConfig
from .errors import UserError
from .families import build_family
from .models.hub import load_state, load_weights, save_state
from .models.transformer import Transformer
from .sampling.blockwise import PrefixKVBackbone, check_kv_refresh, sample_blockwise
from .sampling.loop import SampleOutput, sample_masked


COMPILE_BACKEND = "inductor"  # torch.compile's default; the tests swap in dynamo's "eager" to skip C++ builds


class SequenceModel(torch.nn.Module):
    """A trained (or fresh) ddlm model: `backbone(x_t, t) -> logits`, `family`, `tokenizer`, `cfg`."""

    def __init__(self, cfg: RunConfig, tokenizer):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.family = build_family(cfg.process, tokenizer.vocab_size)
        self.backbone = Transformer(cfg.model, self.family.process.n_states, causal=self.family.causal)

    @property
    def process(self):
        return self.family.process

    @property
    def device(self):
        return next(self.backbone.parameters()).device

    # ---- save / load -------------------------------------------------------------------------------------
    def save_pretrained(self, directory) -> None:
        save_state(directory, {"config": self.cfg.to_dict()}, self.backbone.state_dict(), self.tokenizer)

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
        model = cls(RunConfig.from_dict(meta["config"]), load_tokenizer(directory))
        load_weights(model.backbone, state, directory)
        return model.to(map_location).eval()

    # ---- text <-> tokens ---------------------------------------------------------------------------------
    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer.encode(text), dtype=torch.long)

    def decode(self, tokens) -> str:
        return self.tokenizer.decode([int(i) for i in tokens])

    # ---- sampling ----------------------------------------------------------------------------------------
    def generate(self, n: int = 1, length: int | None = None, steps: int | None = None, *,
                 sampler: str | None = None, planner: str | None = None, temperature: float | None = None,
                 prompt: str | None = None, fixed: torch.Tensor | None = None,
                 fixed_mask: torch.Tensor | None = None, stride: int | None = None, seed: int | None = None,
                 kv_cache: bool = False, kv_refresh: int = 0, compile: bool = False, progress: bool = False,
                 decode: bool = True) -> SampleOutput:
        """Sample n sequences. `prompt` fixes a text prefix; `fixed` (L,) or (n, L) tokens with `fixed_mask`
        fixes any positions (infilling). Lengths beyond the context are generated in sliding blocks
        (`stride` new tokens per block, half the context by default).

        kv_cache (masked diffusion only): in each sliding block after the first, the finished prefix goes
        through the network once (the block's first step) and its keys/values are reused by the later steps,
        which run only the block's tokens (an approximation, see sampling.blockwise.PrefixKVBackbone);
        `kv_refresh` N > 0 recomputes them every N network calls. No effect within the context (one window,
        no finished prefix).

        compile: run the backbone under torch.compile (compiled once per model and kept; the first call pays
        the compilation, tens of seconds on a CPU). It paid 1.14x and 1.31x (two runs) for ancestral sampling at
        8 x 128 x 128 on a 2-core CPU (benchmarks/sampling.py --compile), so it is for long sampling jobs, off by
        default."""
        from .sampling import options as sampling_options

        sc = self.cfg.sample
        length = length or self.cfg.model.max_len
        steps = steps if steps is not None else sc.steps
        sampler = sampler or sc.sampler
        temperature = sc.temperature if temperature is None else temperature
        generator = torch.Generator(device=self.device)
        generator.manual_seed(torch.seed() if seed is None else seed)
        fixed, fixed_mask = self._fixed_positions(length, prompt, fixed, fixed_mask)
        self._check_kv_cache(kv_cache, kv_refresh)
        was_training = self.backbone.training
        self.backbone.eval()
        backbone = self._compiled_backbone() if compile else self.backbone
        try:
            opts = sampling_options(self.family, sampler, planner or sc.planner, steps, temperature)
            if self.family.causal:
                prompt_ids = None if fixed is None else fixed[0, : int(fixed_mask[0].sum())]
                out = self.family.sample(backbone, self.process, n, length, prompt=prompt_ids,
                                         generator=generator, progress=progress, **opts)
            else:
                def window(n_, length_, fixed_, mask_, prefix=0):
                    net = backbone
                    if kv_cache and prefix:
                        net = PrefixKVBackbone(backbone, prefix, n_, kv_refresh)
                    return self.family.sample(net, self.process, n_, length_, fixed=fixed_,
                                              fixed_mask=mask_, generator=generator, progress=progress, **opts)
                context = self.cfg.model.max_len
                if length <= context:
                    out = window(n, length, fixed, fixed_mask)
                else:
                    if self.cfg.model.positions == "grid":
                        raise UserError(f"a grid model generates exactly {context} tokens; got length {length}")
                    out = sample_blockwise(window, n, length, context, stride or context // 2, fixed, fixed_mask)
        finally:
            self.backbone.train(was_training)
        if decode:
            out.texts = [self.decode(row) for row in out.tokens]
        return out

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

    def _fixed_positions(self, length, prompt, fixed, fixed_mask):
        if prompt:
            ids = self.encode(prompt)
            if len(ids) > length:
                raise UserError(f"the prompt has {len(ids)} tokens but the length is {length}; "
                                "use a longer --length or a shorter prompt")
            fixed = torch.zeros(1, length, dtype=torch.long)
            fixed_mask = torch.zeros(1, length, dtype=torch.bool)
            fixed[0, : len(ids)] = ids
            fixed_mask[0, : len(ids)] = True
            return fixed, fixed_mask
        if fixed is None:
            return None, None
        fixed, fixed_mask = torch.as_tensor(fixed).long(), torch.as_tensor(fixed_mask).bool()
        if fixed.dim() == 1:
            fixed, fixed_mask = fixed[None], fixed_mask[None]
        if fixed.shape[-1] != length or fixed_mask.shape != fixed.shape:
            raise UserError(f"fixed tokens {tuple(fixed.shape)} and fixed_mask {tuple(fixed_mask.shape)} must "
                            f"both have the sequence length {length} as their last dimension")
        if self.family.causal and not _is_prefix(fixed_mask):
            raise UserError("an autoregressive model can only continue a prefix; use a diffusion model to infill")
        if ((fixed[fixed_mask] < 0) | (fixed[fixed_mask] >= self.tokenizer.vocab_size)).any():
            raise UserError(f"fixed tokens must be in 0..{self.tokenizer.vocab_size - 1}")
        return fixed, fixed_mask


def _is_prefix(mask: torch.Tensor) -> bool:
    n = mask.sum(-1, keepdim=True)
    return bool((mask == (torch.arange(mask.shape[-1]) < n)).all() and (n == n[0]).all())
