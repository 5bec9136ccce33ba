"""AdamW with decoupled weight decay on matrices only, linear warm-up then cosine decay, and EMA weights."""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # norms, biases and embedding tables are not decayed (Loshchilov & Hutter 2019; nanoGPT)
        (decay if p.dim() >= 2 and "embed" not in name and "pos" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), eps=1e-8)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak lr at `step` (0-based): linear warm-up, then cosine to min_lr_ratio."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer, step: int, cfg: TrainConfig) -> float:
    lr = cfg.lr * lr_factor(step, cfg)
    for g in optimizer.param_groups:
        g["lr"] = lr
    return lr


class EMA:
    """Exponential moving average of parameters: ema <- d * ema + (1 - d) * theta."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return self.shadow

    def load_state_dict(self, state: dict) -> None:
        """Copies of `state`'s tensors, each on the device of the weight it shadows (a checkpoint holds CPU ones)."""
        old = self.shadow
        self.shadow = {k: v.to(old[k].device if k in old else v.device, copy=True) for k, v in state.items()}
