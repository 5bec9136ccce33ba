"""SequenceModels whose backbone is an exact toy oracle (toys.RecordToy): the pipeline end to end, exactly."""

from __future__ import annotations

import torch

from ddlm.config import apply_overrides, load_preset
from ddlm.data.tokenizers import CharTokenizer
from ddlm.pipeline import SequenceModel
from ddlm.toys import RecordToy

# the real characters of the toy's tokenizer: ids a=0, b=1, then <bos>=2, <eos>=3, <pad>=4
CHARS = "ab"


def record_toy(length_p=None, length=5, seed=1) -> RecordToy:
    return RecordToy(len(CHARS), length, length_p or {1: 0.2, 2: 0.3, 4: 0.5}, seed=seed)


def toy_model(toy: RecordToy, family: str = "mdlm") -> SequenceModel:
    """A SequenceModel of `family` (mdlm or ar) with a char tokenizer with specials whose backbone is the toy's
    exact denoiser (mdlm) or exact next-token model (ar); its context is the toy's length."""
    cfg = apply_overrides(load_preset("tiny"), [f"process.name={family}", f"model.max_len={toy.L}",
                                                f"sample.steps={toy.L}"])
    model = SequenceModel(cfg, CharTokenizer(CHARS, specials=True))
    assert model.tokenizer.vocab_size == toy.V and model.tokenizer.eos_id == toy.eos_id
    model.backbone = toy.ar_oracle() if family == "ar" else toy.oracle()
    return model.eval()


def length_chi_square(lengths: torch.Tensor, length_p: dict) -> tuple[float, float]:
    """Pearson's statistic of observed lengths (N,) against length_p, and its upper 0.1% point."""
    crit_0001 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}
    keys = sorted(length_p)
    counts = torch.tensor([(lengths == k).sum().item() for k in keys], dtype=torch.float64)
    assert counts.sum() == len(lengths), "a length outside the toy's support"
    expected = torch.tensor([length_p[k] for k in keys], dtype=torch.float64) * len(lengths)
    return (((counts - expected) ** 2) / expected).sum().item(), crit_0001[len(keys) - 1]
