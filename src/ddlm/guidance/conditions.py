"""Class conditions: a backbone wrapper that feeds per-row labels, and label dropout for training.

One model is both conditional and unconditional when training replaces a row's label by the null label
(-1, the backbone's last label embedding) with probability p (Ho & Salimans 2022, "Classifier-Free
Diffusion Guidance"); classifier-free guidance (`cfg.py`) then contrasts the two at sampling time.
"""

from __future__ import annotations

import torch

from ..data.batches import Batch
from ..errors import UserError

NULL_LABEL = -1  # the backbone maps labels < 0 to its extra (null) embedding row


def check_dropout(p) -> float:
    """The label dropout probability, in [0, 1]."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise UserError(f"train.cond_dropout must be a probability in [0, 1], got {p!r}")
    return float(p)


def dropout_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator of (seed, step, rank) only, so the labels dropped at a step survive a resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank + 7)


def drop_labels(batch: Batch, p: float, generator: torch.Generator | None = None) -> Batch:
    """The batch with each row's label replaced by the null label with probability p (independent rows).
    A batch without labels, or p = 0, is returned as it is (the same object)."""
    if batch.cond is None or p == 0.0:
        return batch
    u = torch.rand(batch.cond.shape, generator=generator, dtype=torch.float64)  # (B,) on the CPU: device-free
    drop = (u < p).to(batch.cond.device)
    cond = torch.where(drop, torch.full_like(batch.cond, NULL_LABEL), batch.cond)
    return Batch(batch.tokens, batch.mask, cond, batch.attend)


def classes_from_data(cfg, names: tuple, causal: bool):
    """cfg with model.n_classes and model.class_names set from the labels of the data (`names`, label order):
    model.n_classes = 0 takes the data's count; a different count, or other names (a resumed run), is refused."""
    import dataclasses

    if not names:
        return cfg
    if causal:
        raise UserError("the ar family samples left to right without labels; train it on unlabelled records "
                        "(e.g. data.records=lines) or choose a diffusion family (--process)")
    m = cfg.model
    if m.n_classes not in (0, len(names)):
        raise UserError(f"model.n_classes={m.n_classes} but the data have {len(names)} labels "
                        f"({', '.join(names[:6])}); set model.n_classes={len(names)} or 0 (from the data)")
    if m.class_names and tuple(m.class_names) != tuple(names):
        raise UserError(f"this run's labels are {', '.join(m.class_names)} but the data's are {', '.join(names)}; "
                        "train on the same labelled data or start a new run")
    return cfg.replace(model=dataclasses.replace(m, n_classes=len(names), class_names=tuple(names)))


def _by_name(cond, names: tuple):
    """A label given as text: a class name (label i is names[i]), else a whole number; lists element-wise."""
    if isinstance(cond, (list, tuple)):
        return [_by_name(c, names) for c in cond]
    if not isinstance(cond, str):
        return cond
    if cond in names:
        return names.index(cond)
    try:
        return int(cond)
    except ValueError:
        known = f"one of {', '.join(names)} or a number" if names else "a whole number"
        raise UserError(f"unknown class label {cond!r}; this model's labels are {known}") from None


def check_labels(cond, n: int, n_classes: int, names: tuple = ()) -> torch.Tensor:
    """User labels -> (n,) long: one label for every sample (an int, or a name of `names`) or one per sample
    ((n,) of them), each in 0..n_classes-1 (or -1, the null label: unconditional)."""
    if n_classes <= 0:
        raise UserError("this model is unconditional (model.n_classes = 0); drop cond (--cond) or train a "
                        "model with model.n_classes > 0")
    cond = _by_name(cond, tuple(names))
    try:
        labels = torch.as_tensor(cond)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"cond must be a class label or one label per sample, got {cond!r}") from None
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex() or labels.dim() > 1:
        raise UserError(f"cond must be whole-number labels (one, or one per sample), got {cond!r}")
    labels = labels.long().reshape(-1)
    if labels.numel() == 1:
        labels = labels.expand(n).clone()
    if labels.numel() != n:
        raise UserError(f"cond has {labels.numel()} labels but n is {n}; give one label or one per sample")
    bad = (labels < NULL_LABEL) | (labels >= n_classes)
    if bool(bad.any()):
        named = f" ({', '.join(names)})" if names else ""
        raise UserError(f"class label {int(labels[bad][0])} is out of range; this model has labels "
                        f"0..{n_classes - 1}{named} (-1 = unconditional)")
    return labels


class Conditioned(torch.nn.Module):
    """`backbone(x, t) -> logits` with a fixed label per row: cond (B,) long for the B rows of a run.

    The sampling core's row-caching denoiser evaluates subsets of rows and says which with `select_rows(idx)`
    before the call; the labels of those rows are then used (and the call is passed on to an inner backbone
    that keeps per-row state)."""

    def __init__(self, backbone, cond: torch.Tensor):
        super().__init__()
        self.backbone, self.cond, self._rows = backbone, cond, None

    @property
    def time_conditioned(self) -> bool:
        return getattr(self.backbone, "time_conditioned", False)

    def select_rows(self, idx: torch.Tensor) -> None:
        self._rows = idx
        if hasattr(self.backbone, "select_rows"):
            self.backbone.select_rows(idx)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, **kw) -> torch.Tensor:
        rows, self._rows = self._rows, None
        cond = self.cond.to(x.device)
        if rows is not None:
            cond = cond[rows.to(x.device)]
        if cond.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} rows but {cond.shape[0]} labels; call select_rows for a subset")
        return self.backbone(x, t, cond=cond, **kw)
