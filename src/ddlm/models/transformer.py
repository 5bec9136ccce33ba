"""The backbone: token ids (and optionally t, a class label, a key-padding mask) -> logits. Nothing here knows what the logits mean.

`Transformer(cfg, n_states, causal=False)` is the bidirectional denoiser of MDLM/D3PM/RDM (a DiT-style
encoder); with `causal=True` it is the autoregressive baseline built from the same blocks, so the two differ
only in the attention mask.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..errors import UserError
from .layers import Block, Rotary, TimeEmbedding

ROTARY = ("rotary", "rotary+learned")  # model.positions with rotary attention
LEARNED = ("learned", "rotary+learned")  # model.positions with an absolute table added to the embeddings


def grid_coordinates(grid: tuple) -> torch.Tensor:
    """(L, K) integer coordinates of each cell of a row-major grid: row, column[, box]."""
    if len(grid) not in (2, 4):
        raise UserError(f"model.grid must be [rows, cols] or [rows, cols, box_rows, box_cols], got {list(grid)}")
    rows, cols = grid[0], grid[1]
    r = torch.arange(rows).repeat_interleave(cols)
    c = torch.arange(cols).repeat(rows)
    coords = [r, c]
    if len(grid) == 4:
        br, bc = grid[2], grid[3]
        coords.append((r // br) * (cols // bc) + c // bc)
    return torch.stack(coords, dim=-1)


class Transformer(nn.Module):
    """Pre-norm transformer over n_states token ids (real tokens + MASK/BOS), output logits over n_states."""

    def __init__(self, cfg: ModelConfig, n_states: int, causal: bool = False):
        super().__init__()
        if cfg.d_model % cfg.n_heads or (cfg.d_model // cfg.n_heads) % 2:
            raise UserError(f"model.d_model={cfg.d_model} must be divisible by model.n_heads={cfg.n_heads} "
                            "into an even head width")
        self.cfg, self.n_states, self.causal = cfg, n_states, causal
        d = cfg.d_model
        self.embed = nn.Embedding(n_states, d)
        rotary = None
        if cfg.positions in ROTARY:
            rotary = Rotary(d // cfg.n_heads, cfg.max_len * 64)  # room for long AR generation
        if cfg.positions in LEARNED:
            # rotary alone is relative: a bidirectional model whose inputs are all MASK cannot tell its positions
            # apart (every query sees identical keys and values), so its first draws of a record row are the same
            # at every position; an absolute table breaks the symmetry (README, Molecules)
            self.pos = nn.Embedding(cfg.max_len, d)
        elif cfg.positions == "grid":
            coords = grid_coordinates(cfg.grid)
            if coords.shape[0] != cfg.max_len:
                raise UserError(f"model.grid {list(cfg.grid)} has {coords.shape[0]} cells but model.max_len is "
                                f"{cfg.max_len}; make them agree")
            self.register_buffer("coords", coords, persistent=False)
            self.pos_tables = nn.ModuleList(nn.Embedding(int(coords[:, k].max()) + 1, d)
                                            for k in range(coords.shape[1]))
        elif cfg.positions != "rotary":
            raise UserError(f"unknown model.positions {cfg.positions!r}; choose rotary, learned, rotary+learned or "
                            "grid")
        cond_dim = d if cfg.time_conditioning else 0
        self.time = TimeEmbedding(d) if cond_dim else None
        self.blocks = nn.ModuleList(
            Block(d, cfg.n_heads, cfg.mlp_ratio, cfg.dropout, causal, rotary, cond_dim) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_states, bias=False)
        # class labels (n_classes + 1 rows: the last is the 'null' label, for classifier-free guidance);
        # created only for a conditional model, so an unconditional one keeps its state-dict keys
        self.n_classes = int(getattr(cfg, "n_classes", 0))
        if self.n_classes < 0:
            raise UserError(f"model.n_classes must be >= 0 (0 = unconditional), got {self.n_classes}")
        self.label = nn.Embedding(self.n_classes + 1, d) if self.n_classes else None
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            if m.weight.abs().sum() != 0:  # keep adaLN-Zero's zeros
                nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None and m.weight.abs().sum() != 0:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def time_conditioned(self) -> bool:
        return self.time is not None

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, kv_caches: list | None = None,
                offset: int = 0, *, cond: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L) long, t (B,) float in [0, 1] or None -> logits (B, L, n_states).

        kv_caches: one dict per block (see Block.attention); x's positions start after the cached ones.
        cond: (B,) long class labels (0..n_classes-1, -1 = the null label) or None (the null label); only a
        model with n_classes > 0 takes labels. The label's embedding is added to every token's embedding.
        mask: (B, S) bool key-padding mask over all S = cached + L keys (False = never attended) or None."""
        h = self.embed(x)  # (B, L, d)
        if self.label is not None:
            labels = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device) if cond is None else cond
            if bool(((labels < -1) | (labels >= self.n_classes)).any()):
                raise ValueError(f"class labels must lie in -1..{self.n_classes - 1}")
            h = h + self.label(torch.where(labels < 0, self.n_classes, labels))[:, None, :]
        elif cond is not None:
            raise ValueError("this backbone is unconditional (model.n_classes = 0) but was given class labels")
        L = x.shape[1]
        if kv_caches is not None and "k" in kv_caches[0]:
            offset = kv_caches[0]["k"].shape[-2]
        if self.cfg.positions in LEARNED:
            if offset + L > self.cfg.max_len:
                raise UserError(f"sequence of {offset + L} tokens exceeds the model's context of "
                                f"{self.cfg.max_len} (learned positions cannot extrapolate)")
            h = h + self.pos.weight[offset: offset + L]
        elif self.cfg.positions == "grid":
            for k, table in enumerate(self.pos_tables):
                h = h + table(self.coords[offset: offset + L, k])
        time_cond = None
        if self.time is not None:
            if t is None:
                t = torch.zeros(x.shape[0], device=x.device)
            time_cond = self.time(t)
        for i, block in enumerate(self.blocks):
            h = block(h, time_cond, None if kv_caches is None else kv_caches[i], mask)
        return self.head(self.norm(h))

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
