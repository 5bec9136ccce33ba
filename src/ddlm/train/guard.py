"""Guards around a training run: every setting checked before work starts, a memory estimate, and Ctrl-C /
SIGTERM handling.

Signals. The first SIGINT or SIGTERM sets a flag that the loop reads after each step: it finishes the step,
writes a checkpoint and stops. A second one stops the process at once (exit status 130), even in the middle
of a long step: Python runs signal handlers only between bytecodes, so a watcher thread reads the signal
numbers that the interpreter's C-level handler writes to a wakeup pipe and calls `os._exit`. Nothing is lost
that was saved: checkpoints are written to a *.tmp file and renamed, so the last complete one stays valid.
Signals less than SAME_SIGNAL_S apart are one request delivered twice, not a second one: `timeout -s INT`
sends its signal to the command and again to its process group, microseconds apart (seen on a GPU machine,
where it made a timed-out `ddlm finetune` stop without writing its model).

Memory. `estimate_bytes` is a deliberately rough upper estimate of one training process's peak: weights,
gradients, AdamW's two moments, the EMA and an exported copy (7 copies of the parameters, float32), plus
the activations kept for the backward pass, dominated by attention scores (micro-batch * heads * L^2 per
layer, as an unfused kernel would hold them) and the logits (micro-batch * L * vocab).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time

from ..errors import UserError
from .device import parse_device

EXIT_INTERRUPTED = 130
SAME_SIGNAL_S = 0.1  # a person's second Ctrl-C comes later than this; one signal delivered twice, sooner


class SignalGuard:
    """Context manager: `flag` (a list) gets the signal number on the first SIGINT/SIGTERM; a second one exits
    the process at once with status 130 after one line on stderr (`message`)."""

    def __init__(self, message: str):
        self.message = message
        self.flag: list[int] = []
        self._handlers, self._pipe, self._old_fd, self._thread = {}, None, None, None
        self._first: float | None = None  # time.monotonic() of the first signal

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):  # on every rank: torchrun passes a Ctrl-C on to each worker
            try:
                self._handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: signals cannot be caught here
                return self
        try:
            r, w = os.pipe()
            os.set_blocking(w, False)  # the C handler must never block
            self._old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self._pipe = (r, w)
            self._thread = threading.Thread(target=self._watch, args=(r,), daemon=True, name="ddlm-signals")
            self._thread.start()
        except (ValueError, OSError):  # without the watcher the Python handler still counts (between bytecodes)
            self._pipe = None
        return self

    def __exit__(self, *exc):
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_fd if self._old_fd is not None else -1)
            os.close(self._pipe[1])  # the watcher reads end-of-file and leaves
            self._thread.join(timeout=1.0)
            os.close(self._pipe[0])
        for sig, h in self._handlers.items():
            signal.signal(sig, h)
        return False

    def _is_second(self) -> bool:
        """Count one signal; True for a second request: a signal at least SAME_SIGNAL_S after the first."""
        now = time.monotonic()
        if self._first is None:
            self._first = now
        return now - self._first >= SAME_SIGNAL_S

    def _on_signal(self, signum, frame):
        self.flag.append(signum)
        # the watcher, when there is one, tells a second signal from a repeat: this handler may run seconds late
        # (after a long C call), which would part two signals that came together
        if self._pipe is None and self._is_second():
            self._stop_now()

    def _watch(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:
                return
            for _ in range(sum(1 for b in data if b in (signal.SIGINT, signal.SIGTERM))):
                if self._is_second():
                    self._stop_now()

    def _stop_now(self) -> None:
        try:
            if self.message:
                sys.stderr.write(self.message + "\n")
                sys.stderr.flush()
        finally:
            os._exit(EXIT_INTERRUPTED)


def machine_memory(device) -> int | None:
    """Bytes of memory of the training device: the GPU's, or the machine's RAM; None if unknown."""
    if device.type == "cuda":
        import torch
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def estimate_bytes(cfg, world: int = 1) -> int:
    """A rough upper estimate of one process's peak memory when training `cfg` (see the module docstring)."""
    m, t, d = cfg.model, cfg.train, cfg.data
    vocab = d.vocab_size if d.tokenizer == "bpe" else 256  # char vocabularies are smaller than this
    width, length = m.d_model, m.max_len
    hidden = int(width * m.mlp_ratio)
    per_layer = 4 * width * width + 2 * width * hidden + (6 * width * width if m.time_conditioning else 0)
    params = m.n_layers * per_layer + 2 * vocab * width + length * width  # blocks, embedding, head, positions
    weights = 7 * 4 * params  # weights, grads, 2 AdamW moments, EMA, exported copy, a spare
    micro = max(1, t.batch_size // max(1, t.grad_accum) // max(1, world))
    attention = micro * m.n_heads * length * length * m.n_layers * 4 * 2  # scores and softmax, float32
    linear = micro * length * m.n_layers * (8 * width + 2 * hidden) * 4
    logits = micro * length * vocab * 4 * 3  # logits, log-softmax and its gradient
    return int(weights + attention + linear + logits)


def check_memory(cfg, device, world: int = 1, warn=None) -> int:
    """UserError when the estimate exceeds the device's memory; a one-line warning (via `warn`) above half."""
    need, have = estimate_bytes(cfg, world), machine_memory(device)
    if not have:
        return need
    what = "GPU memory" if device.type == "cuda" else "RAM"
    sizes = (f"model.max_len={cfg.model.max_len}, train.batch_size={cfg.train.batch_size}, "
             f"model.d_model={cfg.model.d_model}, model.n_layers={cfg.model.n_layers}")
    if need > have:
        raise UserError(f"training would need about {_gb(need)} but this machine has {_gb(have)} of {what} "
                        f"({sizes}); lower model.max_len or train.batch_size (or raise train.grad_accum)")
    if need > have / 2 and warn is not None:
        warn(f"warning: training may need about {_gb(need)} of the {_gb(have)} of {what} ({sizes})")
    return need


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _in_range(name: str, value, lo, hi, lo_open: bool = False, hi_open: bool = False) -> None:
    """UserError unless lo <(=) value <(=) hi (NaN is never in range)."""
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        raise UserError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, "
                        f"got {value}")


def validate_config(cfg: RunConfig) -> None:
    """Every training setting checked before any work starts: a bad value is one line, never a traceback."""
    t = cfg.train
    for name in ("max_steps", "batch_size", "grad_accum", "eval_batches"):
        if getattr(t, name) <= 0:
            raise UserError(f"train.{name} must be positive, got {getattr(t, name)}")
    for name in ("eval_every", "ckpt_every", "log_every", "warmup_steps", "threads"):
        if getattr(t, name) < 0:
            raise UserError(f"train.{name} must be >= 0, got {getattr(t, name)}")
    if t.batch_size % t.grad_accum:
        raise UserError(f"train.batch_size={t.batch_size} must be divisible by train.grad_accum={t.grad_accum}")
    if not (t.lr > 0 and math.isfinite(t.lr)):
        raise UserError(f"train.lr must be a positive number, got {t.lr}")
    _in_range("train.seed", t.seed, 0, 2**31 - 1)  # NumPy and torch generators take 32-bit seeds
    _in_range("train.ema", t.ema, 0.0, 1.0, hi_open=True)
    _in_range("train.beta2", t.beta2, 0.0, 1.0, hi_open=True)
    _in_range("train.min_lr_ratio", t.min_lr_ratio, 0.0, 1.0)
    _in_range("train.weight_decay", t.weight_decay, 0.0, math.inf, hi_open=True)
    _in_range("train.grad_clip", t.grad_clip, 0.0, math.inf, hi_open=True)
    parse_device(t.device)  # its form here; whether this machine has it, when the Trainer places the model
    m = cfg.model
    for name in ("n_layers", "d_model", "n_heads", "max_len"):
        if getattr(m, name) <= 0:
            raise UserError(f"model.{name} must be positive, got {getattr(m, name)}")
    _in_range("model.dropout", m.dropout, 0.0, 1.0, hi_open=True)
    _in_range("model.mlp_ratio", m.mlp_ratio, 0.0, 1024.0, lo_open=True)
    if int(m.d_model * m.mlp_ratio) < 1:
        raise UserError(f"model.mlp_ratio={m.mlp_ratio} leaves the MLP no hidden units; use e.g. 4")
    sc = cfg.sample  # checked now so that a week of training does not end in a model that cannot sample
    if sc.steps <= 0:
        raise UserError(f"sample.steps must be positive, got {sc.steps}")
    _in_range("sample.temperature", sc.temperature, 0.0, 100.0)
