"""Left-to-right sampling for the autoregressive baseline, with a KV cache (one token per network call)."""

from __future__ import annotations

import time

import torch

from .categorical import sample_categorical
from .loop import SampleOutput, check_sampling_args


@torch.no_grad()
def sample_autoregressive(backbone, process, n: int, length: int, *, temperature: float = 1.0,
                          prompt: torch.Tensor | None = None, generator=None, progress: bool = False,
                          **_unused) -> SampleOutput:
    """prompt: (P,) long prefix (optional). Returns n sequences of `length` tokens including the prompt."""
    check_sampling_args(n, length, 1, temperature)
    device = next(backbone.parameters()).device
    start = time.perf_counter()
    caches = [dict() for _ in backbone.blocks]
    x = torch.full((n, 1), process.bos_id, dtype=torch.long, device=device)
    if prompt is not None and len(prompt):
        x = torch.cat([x, prompt.to(device).expand(n, -1)], dim=1)
    out, nfe, offset = x, 0, 0
    inp = x
    iterator = range(length - (out.shape[1] - 1))
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc="sampling", leave=False)
    for _ in iterator:
        logits = backbone(inp, kv_caches=caches)  # (B, l, V + 1)
        nfe += 1
        nxt = sample_categorical(process.log_probs(logits[:, -1]), temperature, generator)  # (B,)
        out = torch.cat([out, nxt[:, None]], dim=1)
        inp = nxt[:, None]
    return SampleOutput(out[:, 1:], nfe, nfe * n, time.perf_counter() - start)
