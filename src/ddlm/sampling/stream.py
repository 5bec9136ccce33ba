"""Generation as a stream of steps: what the terminal (`--show`) and the web page (`ddlm serve`) display.

    for step in lm.stream(n=1, length=64, seed=0):
        print(step.index, int(step.masked.sum()), step.nfe)     # the last one has step.final and step.texts

The sampling core calls its `observer(state)` hook after every step (`core.Hooks`). `Recorder` is such an
observer: it copies each state into a canvas of the whole request (n, L) — rows of the current batch, columns
of the current sliding window — and turns it into a `Step` (tokens, which positions are still masked, which
were committed by this step, the probability the model gave each committed token). `StepStream` runs the
generation in a worker thread and hands the steps over through a bounded queue, so a slow reader slows the
generation down instead of piling steps up, and closing the stream (or `cancel()`) stops it at the next step:
the observer raises `_Cancelled`, which unwinds the sampler and which the worker swallows.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .core import Hooks

QUEUE_SIZE = 8  # steps waiting for the reader: the generation runs at most this far ahead of the display
POLL_S = 0.05  # how often a blocked worker or reader looks at the cancel flag


class _Cancelled(Exception):
    """Raised by the observer in the worker thread when the stream was closed or cancelled."""


@dataclass
class Step:
    """One sampling step of a request (n rows of L tokens), or the final result (`final=True`)."""

    index: int  # 0, 1, ... over the whole request (batches and sliding windows one after another)
    tokens: torch.Tensor  # (n, L) long, a copy: current tokens (masked positions hold the process's noise)
    masked: torch.Tensor  # (n, L) bool positions still to be decided
    new: torch.Tensor  # (n, L) bool positions committed by this step
    confidence: torch.Tensor | None  # (n, L) float32: p(token) when it was committed; NaN where not known
    nfe: int  # network calls so far
    seconds: float  # since the stream started
    batch: int = 0  # which batch of batch_size rows is being sampled
    final: bool = False
    texts: list | None = None  # the decoded samples (final step only)
    output: object = None  # the final SampleOutput (final step only)


def attach_observer(hooks: Hooks | None, observer: Callable) -> Hooks:
    """`hooks` plus `observer(state)` after every step; an observer with a `logits(logp, state)` method also
    sees the log-probabilities (B, L', V) before each step (read-only: the logits are passed on unchanged,
    so the tokens drawn stay bit-identical)."""
    hooks = hooks or Hooks()
    before, see = hooks.observer, getattr(observer, "logits", None)

    def observe(state):
        if before is not None:
            before(state)
        observer(state)

    changes = {"observer": observe}
    if see is not None:
        transform = hooks.logits_transform

        def watch(logp, state):
            if transform is not None:
                logp = transform(logp, state)
            see(logp, state)
            return logp

        changes["logits_transform"] = watch
    return dataclasses.replace(hooks, **changes)


def windows(length: int, context: int, stride: int) -> list[int]:
    """The first column of each sliding window `sample_blockwise` samples (one window within the context)."""
    if length <= context:
        return [0]
    starts, end = [0], min(context, length)
    while end < length:
        end = min(end + stride, length)
        starts.append(end - context)
    return starts


class Recorder:
    """An observer that keeps a canvas (n, L) of a request and emits a `Step` after every sampling step.

    emit(step) is called in the sampling thread. causal: states hold BOS + L tokens, one row per run when rows
    have prompts of their own. starts: the sliding windows' first columns (`windows`)."""

    def __init__(self, n: int, length: int, emit: Callable, *, batch_size: int | None = None, causal=False,
                 starts=(0,), fixed_mask: torch.Tensor | None = None, cancel: threading.Event | None = None):
        self.n, self.length, self.emit, self.causal, self.starts = n, length, emit, causal, list(starts)
        self.batch_size = batch_size or n
        self.cancel = cancel or threading.Event()
        self.tokens = torch.zeros((n, length), dtype=torch.long)
        self.masked = torch.ones((n, length), dtype=torch.bool)
        if fixed_mask is not None:  # (1 or n, L) given positions are never masked
            self.masked &= ~fixed_mask.cpu().bool().expand(n, length)
        self.confidence = torch.full((n, length), float("nan"))
        self.index, self.batch, self.row0 = 0, 0, 0
        self.run, self._state, self._logp = -1, None, None
        self.nfe_done, self._nfe = 0, 0  # network calls of finished runs; of the current run
        self.start = time.perf_counter()

    def next_batch(self, rows: int) -> None:
        """The batch of `rows` rows is finished: the next states belong to the following rows."""
        self.row0, self.batch, self.run, self._state = self.row0 + rows, self.batch + 1, -1, None

    def logits(self, logp, state) -> None:
        self._check()
        self._logp = logp

    def __call__(self, state) -> None:
        self._check()
        if state is not self._state:  # a new run of the core: next window, next AR row, next try
            self._state, self.run = state, self.run + 1
            self.nfe_done, self._nfe = self.nfe_done + self._nfe, 0
        self._nfe = state.nfe
        where = self._locate(state)
        if where is not None:
            rows, col, x, noisy = where
            self._paint(rows, col, x, noisy, self._logp)
        self._logp = None

    def _check(self):
        if self.cancel.is_set():
            raise _Cancelled()

    def _locate(self, state):
        """(rows (b,) of the canvas, first column, x (b, W), noisy (b, W)) of a state, or None (not shown)."""
        x, noisy = state.x, state.noisy
        if self.causal:
            x, noisy = x[:, 1:], noisy[:, 1:]  # drop BOS
        b, width = x.shape
        left = min(self.batch_size, self.n - self.row0)
        if b == left:
            rows = torch.arange(self.row0, self.row0 + b)
        elif self.causal and b == 1:  # AR rows with prompts of their own, one run per row
            rows = torch.tensor([self.row0 + self.run])
        else:
            return None  # a subset of rows (finished rows left out): not mapped, the final step has them
        col = 0
        if width != self.length:
            if self.run >= len(self.starts):
                return None
            col = self.starts[self.run]
        return rows, col, x, noisy

    def _paint(self, rows, col, x, noisy, logp):
        cols = slice(col, col + x.shape[1])
        x, noisy = x.detach().cpu(), noisy.detach().cpu()
        before = self.masked[rows, cols].clone()  # (b, W)
        new = before & ~noisy
        if logp is not None and new.any():
            self.confidence[rows, cols] = torch.where(new, _probability(logp, x), self.confidence[rows, cols])
        self.tokens[rows, cols] = x
        self.masked[rows, cols] = noisy
        fresh = torch.zeros_like(self.masked)
        fresh[rows, cols] = new
        self.emit(Step(self.index, self.tokens.clone(), self.masked.clone(), fresh, self.confidence.clone(),
                       self.nfe_done + self._nfe, time.perf_counter() - self.start, batch=self.batch))
        self.index += 1

    def final(self, tokens: torch.Tensor, nfe: int, texts=None, output=None) -> Step:
        """The last Step: the request's result (n, L) (its rows all decided)."""
        tokens = tokens.detach().cpu()
        new = self.masked.clone()
        masked = torch.zeros_like(self.masked)
        step = Step(self.index, tokens.clone(), masked, new, self.confidence.clone(), nfe,
                    time.perf_counter() - self.start, batch=self.batch, final=True, texts=texts, output=output)
        self.tokens, self.masked = tokens, masked
        return step


def _probability(logp: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """p(x) under logp: (b, W) float32 from logp (b, W, V) or, for AR, (b, 1, V) at every column."""
    logp = logp.detach().float().cpu()
    idx = x.clamp(0, logp.shape[-1] - 1)  # noise tokens (e.g. [MASK]) may lie outside V; never read there
    if logp.shape[1] == x.shape[1]:
        return logp.gather(-1, idx[..., None])[..., 0].exp()
    return logp[:, -1].gather(-1, idx).exp()  # (b, W): the one position drawn is the one read


class StepStream:
    """An iterator of `Step`s produced by `produce(recorder) -> final Step` in a worker thread.

    Iterate it, or call `close()` (also on `with` exit and when the iterator is dropped): the generation stops
    at its next step and the thread ends. An error in the generation (e.g. a UserError for a bad argument)
    is raised by the iteration."""

    def __init__(self, produce: Callable, recorder_args: dict, queue_size: int = QUEUE_SIZE):
        self.cancel_event = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._produce, self._finished = produce, False
        self.recorder = Recorder(emit=self._put, cancel=self.cancel_event, **recorder_args)
        self.thread = threading.Thread(target=self._work, name="ddlm-stream", daemon=True)
        self.thread.start()

    def _put(self, item) -> None:
        while True:
            if self.cancel_event.is_set():
                raise _Cancelled()
            try:
                self._queue.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        try:
            final = self._produce(self.recorder)
            self._put(("final", final))
        except _Cancelled:
            pass
        except BaseException as e:  # handed to the reader, which raises it in its own thread
            try:
                self._put(("error", e))
            except _Cancelled:
                pass

    def __iter__(self):
        return self

    def __next__(self) -> Step:
        if self._finished:
            raise StopIteration
        while True:
            try:
                item = self._queue.get(timeout=POLL_S)
                break
            except queue.Empty:
                if not self.thread.is_alive() and self._queue.empty():
                    self._finished = True
                    raise StopIteration from None
        if isinstance(item, Step):
            return item
        kind, value = item
        self._finished = True
        if kind == "error":
            raise value
        return value

    def cancel(self) -> None:
        """Ask the generation to stop at its next step (returns at once)."""
        self.cancel_event.set()

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the generation and wait for its thread (at most `timeout` seconds)."""
        self._finished = True
        self.cancel_event.set()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.cancel_event.set()


STREAM_OPTIONS = ("sampler", "planner", "temperature", "prompt", "fixed", "fixed_mask", "stride", "seed",
                  "kv_cache", "kv_refresh", "planner_options", "max_length")


def stream_generate(model, n: int = 1, length: int | None = None, steps: int | None = None, *,
                    batch_size: int | None = None, queue_size: int = QUEUE_SIZE, **options) -> StepStream:
    """`SequenceModel.stream`: the steps of `model.generate(n, length, steps, **options)`; the final step's
    tokens and texts are generate's for the same seed and batch size. The arguments are checked here, at the
    call (a UserError before any thread starts)."""
    from ..pipeline import DEFAULT_BATCH_SIZE

    from .. import pipeline

    unknown = set(options) - set(STREAM_OPTIONS) - set(getattr(pipeline, "STEER_KEYS", ()))
    if unknown:
        raise TypeError(f"stream() got unexpected keyword arguments {sorted(unknown)}")
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    req = model._request(n, length, steps, options.get("sampler"), options.get("planner"),
                         options.get("temperature"), options.get("prompt"), options.get("fixed"),
                         options.get("fixed_mask"), options.get("stride"), options.get("seed"), batch_size,
                         bool(options.get("kv_cache")), options.get("kv_refresh") or 0, True, keep_all=True,
                         planner_options=options.get("planner_options"), max_length=options.get("max_length"))
    options["seed"] = req["seed"]  # the same seed in the worker's call, also when it was drawn here
    context = model.cfg.model.max_len
    stride = req["stride"] or context // 2

    def produce(recorder: Recorder) -> Step:
        parts = []
        for part in model.iter_generate(n, length, steps, batch_size=batch_size, observer=recorder, **options):
            parts.append(part)
            recorder.next_batch(part.tokens.shape[0])
        tokens = torch.cat([p.tokens for p in parts])
        out = dataclasses.replace(parts[0], tokens=tokens, nfe=sum(p.nfe for p in parts),
                                  row_evals=sum(p.row_evals for p in parts), seconds=sum(p.seconds for p in parts))
        out.texts, out.seed = [t for p in parts for t in p.texts], req["seed"]
        if parts[0].lengths is not None:
            out.lengths = torch.cat([p.lengths for p in parts])
        return recorder.final(tokens, out.nfe, out.texts, out)

    return StepStream(produce, dict(n=n, length=req["length"], batch_size=batch_size, causal=model.family.causal,
                                    starts=windows(req["length"], context, stride), fixed_mask=req["fixed_mask"]),
                      queue_size)
