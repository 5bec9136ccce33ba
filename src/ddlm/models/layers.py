"""Transformer building blocks shared by the bidirectional denoiser and the causal AR baseline.

Pre-norm blocks with `F.scaled_dot_product_attention` (runs anywhere, uses flash / memory-efficient kernels
on GPU when available), rotary or table position embeddings, and optional adaLN time conditioning
(Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021): rotates pairs of q/k channels by position-dependent angles."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (L, D/2)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        # x: (B, H, L, D); rotate (x1, x2) halves
        L = x.shape[-2]
        cos, sin = self.cos[offset : offset + L], self.sin[offset : offset + L]  # (L, D/2)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2)


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t in [0, 1] followed by a 2-layer MLP: (B,) -> (B, d)."""

    def __init__(self, d: int, n_freq: int = 128):
        super().__init__()
        self.n_freq = n_freq
        self.mlp = nn.Sequential(nn.Linear(n_freq, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.n_freq // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None, :]
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1))


def attention_mask(keys: torch.Tensor, n_queries: int, offset: int, causal: bool) -> torch.Tensor:
    """Boolean attention mask (B, 1, Lq, S) (True = may attend) from a key-padding mask `keys` (B, S) for Lq
    queries at positions offset..offset+Lq-1 of the S keys; with `causal`, query i sees keys j <= i only.

    Every query also sees its own key: a padded query (whose output no loss reads) then never has all keys
    masked, which would make the softmax NaN, and a real query's own key is real, so nothing changes for it."""
    S = keys.shape[-1]
    if S != offset + n_queries:
        raise ValueError(f"the key-padding mask covers {S} keys, but there are {offset} cached + {n_queries} new")
    q = torch.arange(offset, offset + n_queries, device=keys.device)[:, None]  # (Lq, 1)
    j = torch.arange(S, device=keys.device)[None, :]  # (1, S)
    allowed = keys[:, None, None, :]  # (B, 1, 1, S)
    if causal:
        allowed = allowed & (j <= q)
    return allowed | (j == q)


def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of a normalised activation: h (B, L, d), shift and scale (B, 1, d); zero shift and
    scale leave h unchanged."""
    return h * (1 + scale) + shift


class Block(nn.Module):
    """Pre-norm attention + MLP block; with `cond_dim` set, LayerNorms are modulated by adaLN (shift, scale,
    gate) from a conditioning vector and each residual update is multiplied by its gate; the modulation is
    zero-initialised, so the block starts as the identity (adaLN-Zero, Peebles & Xie 2023)."""

    def __init__(self, d: int, n_heads: int, mlp_ratio: float, dropout: float, causal: bool,
                 rotary: Rotary | None, cond_dim: int = 0):
        super().__init__()
        self.n_heads, self.causal, self.rotary, self.dropout = n_heads, causal, rotary, dropout
        self.norm1 = nn.LayerNorm(d, elementwise_affine=cond_dim == 0)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=cond_dim == 0)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        hidden = int(mlp_ratio * d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.drop = nn.Dropout(dropout)
        self.ada = None
        if cond_dim:
            self.ada = nn.Linear(cond_dim, 6 * d)
            nn.init.zeros_(self.ada.weight)
            nn.init.zeros_(self.ada.bias)

    def attention(self, x: torch.Tensor, kv_cache: dict | None = None,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
        """kv_cache: None, or a dict of keys/values (B, H, P, Dh) (after rotary) of P earlier positions; x's
        positions follow them (offset P). An empty dict or one without "frozen" gets this call's keys/values
        appended (the AR sampler); with "frozen": True the cache is read and left unchanged.
        mask: None, or a key-padding mask (B, P + L) bool over every key, cached ones first: False keys are
        never attended."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # (B,H,L,Dh)
        offset = 0
        if kv_cache is not None and "k" in kv_cache:
            offset = kv_cache["k"].shape[-2]
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        if kv_cache is not None:
            if "k" in kv_cache:
                k = torch.cat([kv_cache["k"], k], dim=-2)
                v = torch.cat([kv_cache["v"], v], dim=-2)
            if not kv_cache.get("frozen"):  # the AR sampler appends; a frozen prefix (blockwise) stays as it is
                kv_cache["k"], kv_cache["v"] = k, v
        drop = self.dropout if self.training else 0.0
        if mask is None:  # the plain path, unchanged: no mask tensor, flash kernels where available
            causal = self.causal and L > 1 and offset == 0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=drop)
        else:
            allowed = attention_mask(mask, L, offset, self.causal)  # (B, 1, L, S)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=drop)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None, kv_cache: dict | None = None,
                mask: torch.Tensor | None = None):
        """x (B, L, d); cond (B, cond_dim) or None; mask (B, S) key-padding mask over all S keys (cached + new)."""
        if self.ada is None:
            x = x + self.drop(self.attention(self.norm1(x), kv_cache, mask))
            return x + self.drop(self.mlp(self.norm2(x)))
        # (B, 1, d) each. adaLN-Zero: the gates start at zero (self.ada is zero-initialised), so every
        # sublayer's residual update is zero and the block is exactly the identity until training moves them.
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond)[:, None, :].chunk(6, dim=-1)
        x = x + gate1 * self.drop(self.attention(modulate(self.norm1(x), shift1, scale1), kv_cache, mask))
        return x + gate2 * self.drop(self.mlp(modulate(self.norm2(x), shift2, scale2)))
