"""The training loop. It knows only `loss = objective(backbone, batch)`.

Run directory:
    config.yaml          the full RunConfig
    tokenizer.json       written before the first step
    checkpoints/         resumable, atomic, checksummed (see checkpoint.py)
    model/               the EMA weights as a save_pretrained directory, refreshed at every checkpoint
    log.csv              one row per logged step and per validation

Exact resume: a checkpoint holds the model, EMA, optimiser, step (which fixes the learning-rate schedule and
the data position, since batches depend only on (seed, step)), the training-noise generator, the global
RNG states and the number of log rows written so far. Work that is not training (exporting the EMA model,
validation) runs under `torch.random.fork_rng`, so it never moves the RNG that dropout uses. On resume,
log.csv is cut back to the rows written before the checkpoint, so a killed-and-resumed run has exactly the
rows of an uninterrupted one (only the timing columns differ).

Devices (train.device, see device.py): the weights are initialised on the CPU (the same initial weights on
every device), then the model, its EMA and each batch live on the training device. A checkpoint and the
exported model hold CPU tensors, so any machine can resume or sample from them. In one CPU process the
training noise is one generator stream whose state the checkpoint saves. On a GPU the objective draws its
noise there (the objectives draw on the device of the batch, and a CPU generator cannot drive a CUDA draw),
and the noise generator and the global RNG (dropout) are re-seeded at every step from (seed, step, rank), as
with several processes, so a resume is exact without a GPU generator's state. A GPU run's numbers differ
from a CPU run's in any case: the kernels round differently.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import signal
import time
from pathlib import Path

import torch

from ..config import RunConfig, apply_overrides
from ..errors import UserError
from ..pipeline import SequenceModel
from .checkpoint import (is_complete, list_checkpoints, load_latest, remove_partial_writes, rng_state,
                         save_checkpoint, set_rng_state)
from .device import backend_for, parse_device, resolve_device
from .distributed import any_rank, barrier, mean_over_ranks, no_sync, reseed_step, step_seed
from .optim import EMA, make_optimizer, set_lr


class TrainingStopped(UserError):
    """Training stopped early (NaN loss, interrupted): the last good checkpoint is kept."""


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


def prepare_data(cfg: RunConfig, tokenizer=None):
    """(tokenizer, batch source, validation blocks) for the configured data source."""
    from ..data.batches import BlockBatches
    from ..data.prepare import prepare_text
    from ..data.sources import SOURCES

    if cfg.data.source in SOURCES:
        return SOURCES[cfg.data.source](cfg, tokenizer)
    tokenizer, train_blocks, val_blocks = prepare_text(cfg.data, cfg.model.max_len, tokenizer)
    return tokenizer, BlockBatches(train_blocks, cfg.train.batch_size, cfg.train.seed), val_blocks


def validation_blocks(cfg: RunConfig, tokenizer, data: str | None = None) -> torch.Tensor:
    """The validation blocks of `data` (default: the configured source) in `tokenizer`'s tokens, for evaluation:
    the training part of a text corpus is split off but never encoded."""
    from ..data.prepare import prepare_text
    from ..data.sources import SOURCES

    if data is not None:
        cfg = apply_overrides(cfg, [f"data.source={data}"])
    if cfg.data.source in SOURCES:
        return SOURCES[cfg.data.source](cfg, tokenizer)[2]
    return prepare_text(cfg.data, cfg.model.max_len, tokenizer, train=False)[2]


class Trainer:
    """Trains a SequenceModel into a run directory; `Trainer(cfg, out).run()` or `Trainer.resume(out).run()`."""

    def __init__(self, cfg: RunConfig, out, *, overwrite: bool = False, progress: bool = True, log=print,
                 rank: int = 0, world: int = 1, _resuming: bool = False):
        validate_config(cfg)
        self.cfg, self.out, self.progress, self.log = cfg, Path(out), progress, log
        self.rank, self.world = rank, world
        if world > 1:
            from .distributed import check_batch
            check_batch(cfg.train.batch_size, cfg.train.grad_accum, world)
        self.device = _place(cfg.train.device, rank, world)
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"{self.out} is a file, not a run directory; choose another --out")
        not_empty = not _resuming and self.out.exists() and any(self.out.iterdir())
        barrier()  # every rank has looked at the run directory before rank 0 clears or writes it
        if not_empty:
            if not overwrite:
                raise UserError(f"run directory {self.out} is not empty; use --resume {self.out} to continue it "
                                "or --overwrite to start again")
            if rank == 0:
                shutil.rmtree(self.out)
        if rank == 0:  # now, before minutes of data preparation, so a bad --out fails at once
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot create run directory {self.out}: {e.strerror}; choose another --out") \
                    from None
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        tokenizer = None
        if _resuming:
            from ..data.tokenizers import load_tokenizer
            tokenizer = load_tokenizer(self.out)
        tokenizer, self.batches, self.val_blocks = prepare_data(cfg, tokenizer)
        _seed_everything(cfg.train.seed)
        self.model = SequenceModel(cfg, tokenizer).to(self.device)  # initialised on the CPU, then moved
        self.backbone = self.model.backbone
        self.train_module = self.backbone
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            from .distributed import group_for
            gpu = [self.device.index] if self.device.type == "cuda" else None
            self.train_module = DistributedDataParallel(self.backbone, device_ids=gpu,
                                                        process_group=group_for(backend_for(self.device)))
        if cfg.train.compile:
            self.train_module = torch.compile(self.train_module)
        self.optimizer = make_optimizer(self.backbone, cfg.train)
        self.ema = EMA(self.backbone, cfg.train.ema) if cfg.train.ema > 0 else None
        self.noise = torch.Generator(device=self.device).manual_seed(cfg.train.seed + 1 + 7919 * rank)
        # one saved stream on one CPU process; otherwise re-seeded from (seed, step, rank) at every step
        self.reseed_each_step = world > 1 or self.device.type != "cpu"
        self.step = 0
        self._logger = None
        if rank == 0:
            with _disk_errors(self.out):
                tokenizer.save(self.out)
                # config.yaml last and atomically: its presence marks a run directory `resume` can continue
                tmp = self.out / "config.yaml.tmp"
                cfg.save(tmp)
                os.replace(tmp, self.out / "config.yaml")

    # ---- resume ------------------------------------------------------------------------------------------
    @classmethod
    def resume(cls, out, **kwargs) -> "Trainer":
        from ..config import load_preset

        out = Path(out)
        if not (out / "config.yaml").is_file():
            raise UserError(f"{out} is not a run directory (no config.yaml); start a run with ddlm train --preset")
        cfg = load_preset(str(out / "config.yaml"))
        trainer = cls(cfg, out, _resuming=True, **kwargs)
        state = load_latest(out, log=trainer.log)
        if state is None:
            damaged = [p.name for p in list_checkpoints(out) if is_complete(p)]
            if damaged:  # real corruption, not an interrupted write: let the user decide
                raise UserError(f"no intact checkpoint in {out}/checkpoints ({', '.join(damaged)} failed the "
                                f"checksum); restore them, or delete {out}/checkpoints to resume from step 0")
            trainer.log(f"no complete checkpoint in {out} yet; starting from step 0")
        else:
            trainer.load_state(state)
            trainer.log(f"resuming {out} from step {trainer.step}")
        if trainer.rank == 0:
            rows = state.get("log_rows") if state else 0  # None: a checkpoint from before log_rows; keep the log
            if rows is not None:
                _CSVLog.truncate(out / "log.csv", rows)
            remove_partial_writes(out)
        return trainer

    def state(self) -> dict:
        return {"step": self.step, "model": self.backbone.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None, "noise": self.noise.get_state(),
                "rng": rng_state(), "config": self.cfg.to_dict(),
                "log_rows": self._logger.rows if self._logger else 0}

    def load_state(self, state: dict) -> None:
        try:
            self.backbone.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.ema and state["ema"] is not None:
                self.ema.load_state_dict(state["ema"])
            self.step = state["step"]
            if state["noise"].numel() == self.noise.get_state().numel():
                self.noise.set_state(state["noise"])
            elif not self.reseed_each_step:  # written by a run on another device: its generator does not fit
                self.log("the checkpoint's training noise comes from a run on another device; the noise goes on "
                         "from a seed of (seed, step), so this run will not equal one that never moved")
                self.noise.manual_seed(step_seed(self.cfg.train.seed, self.step, self.rank))
            set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:  # config.yaml edited to another model
            first = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()[:160]
            raise UserError(f"the checkpoint in {self.out}/checkpoints does not fit {self.out}/config.yaml "
                            f"({first}); undo the edit of config.yaml, or start a new run") from None

    # ---- the loop ----------------------------------------------------------------------------------------
    def run(self) -> SequenceModel:
        cfg = self.cfg.train
        objective = self.model.family.objective
        interrupted = []
        handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):  # on every rank: torchrun passes a Ctrl-C on to each worker
            try:
                handlers[sig] = signal.signal(sig, lambda s, f: interrupted.append(s))
            except ValueError:  # not the main thread
                pass
        stopped = False
        bar = None
        if self.progress and self.rank == 0:
            from tqdm import tqdm
            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="training", dynamic_ncols=True)
        logger = self._logger = _CSVLog(self.out / "log.csv") if self.rank == 0 else None
        t0, tokens = time.perf_counter(), 0
        self.backbone.train()
        try:
            while self.step < cfg.max_steps:
                lr = set_lr(self.optimizer, self.step, cfg)
                batch = self.batches.batch(self.step, self.rank, self.world).to(self.device)  # (B / world, L)
                if self.reseed_each_step:  # noise of (seed, step, rank): a resume needs no generator state
                    reseed_step(self.noise, cfg.seed, self.step, self.rank)
                self.optimizer.zero_grad(set_to_none=True)
                metrics = {}
                chunks = batch.chunk(cfg.grad_accum)
                for i, chunk in enumerate(chunks):  # gradient accumulation over micro-batches
                    with no_sync(self.train_module, last=i == len(chunks) - 1):  # DDP: one all-reduce per step
                        out = objective(self.train_module, chunk, self.noise)
                        (out["loss"] / cfg.grad_accum).backward()
                    for k, v in out.items():
                        metrics[k] = metrics.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
                # the norm is computed even without clipping (max_norm=inf scales by exactly 1): an infinite
                # gradient with a finite loss would otherwise write NaN weights into the next checkpoint
                grad_norm = torch.nn.utils.clip_grad_norm_(self.backbone.parameters(),
                                                           cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                for what, value in (("loss", metrics["loss"]), ("gradient norm", float(grad_norm))):
                    if not math.isfinite(value):
                        raise TrainingStopped(
                            f"the {what} is not finite ({value}) at step {self.step}; training stopped before "
                            f"the update, the last good checkpoint in {self.out}/checkpoints is kept (lower "
                            f"train.lr or set train.grad_clip in {self.out}/config.yaml, then --resume)")
                self.optimizer.step()
                if self.ema:
                    self.ema.update(self.backbone)
                self.step += 1
                tokens += batch.numel() * self.world
                if self.world > 1 and (self._log_step(cfg) or self.step == cfg.max_steps):
                    metrics = mean_over_ranks(metrics)  # every rank joins; rank 0 logs the global batch's loss
                if self.rank == 0:
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{lr:.1e}")
                    if self._log_step(cfg) or self.step == cfg.max_steps:
                        elapsed = time.perf_counter() - t0
                        logger.write(step=self.step, split="train", **metrics, lr=lr, grad_norm=float(grad_norm),
                                     tokens_per_s=tokens / max(elapsed, 1e-9), elapsed_s=elapsed)
                    if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                        self._validate(logger, bar)
                    if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < cfg.max_steps:
                        self._checkpoint()
                # all ranks stop after the same step (one tiny all-reduce), or the others would wait forever
                stopped = any_rank(bool(interrupted)) if self.world > 1 else bool(interrupted)
                if stopped:
                    break
            if self.rank == 0:
                self._checkpoint()
            if interrupted if self.world == 1 else stopped:
                raise TrainingStopped(f"interrupted at step {self.step}; checkpoint written, continue with "
                                      f"`ddlm train --resume {self.out}`")
            if self.rank == 0:
                self.final_metrics = self._validate(logger, bar)
        finally:
            if bar is not None:
                bar.close()
            for sig, h in handlers.items():
                signal.signal(sig, h)
        return self.export_model()

    def _checkpoint(self) -> None:
        save_checkpoint(self.out, self.state())  # tensors on the CPU (save_checkpoint moves them)
        with _disk_errors(self.out):
            self.export_model("cpu").save_pretrained(self.out / "model")

    def export_model(self, device=None) -> SequenceModel:
        """The model to sample from, on `device` (the training device by default): a copy with the EMA weights
        when EMA is on, the training model itself when it is off and already there."""
        device = self.device if device is None else torch.device(device)
        if self.ema is None and device == self.device:
            return self.model
        with torch.random.fork_rng(devices=[]):  # building the copy draws init weights: keep the RNG unmoved
            exported = SequenceModel(self.cfg, self.model.tokenizer).to(device)
        exported.backbone.load_state_dict(self.ema.state_dict() if self.ema else self.backbone.state_dict())
        return exported.eval()

    def _log_step(self, cfg) -> bool:
        """A training row is logged every train.log_every steps (0: only the last step's)."""
        return bool(cfg.log_every) and self.step % cfg.log_every == 0

    def _validate(self, logger, bar) -> dict:
        gpus = [self.device.index] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus):  # validation must not move the training RNG
            return self._validate_unforked(logger, bar)

    def _validate_unforked(self, logger, bar) -> dict:
        from ..eval.elbo import evaluate_nll

        model = self.export_model()
        n = self.cfg.train.eval_batches * self.cfg.train.batch_size
        metrics = evaluate_nll(model, self.val_blocks, batch_size=self.cfg.train.batch_size, t_samples=1,
                               seed=1234, max_blocks=n)
        logger.write(step=self.step, split="val", nelbo=metrics["nll"], bpc=metrics["bpc"])
        msg = f"step {self.step}: validation {metrics['nll']:.4f} nats/token, {metrics['bpc']:.4f} bpc"
        (bar.write if bar is not None else self.log)(msg)
        return metrics


@contextlib.contextmanager
def _disk_errors(run_dir: Path):
    """A full disk or a permission problem while writing is the user's to fix: one line, not a traceback."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write into {run_dir}: {e.strerror or e}; free disk space or fix the permissions, "
                        f"then `ddlm train --resume {run_dir}`") from None


def _place(spec: str, rank: int, world: int) -> torch.device:
    """This process's training device (cuda:LOCAL_RANK under torchrun); every rank must agree on its kind."""
    local_rank, local_world = 0, 1
    if world > 1:
        from .distributed import from_env, same_on_all_ranks
        env = from_env()
        local_rank, local_world = (env.local_rank, env.local_world) if env.world == world else (rank, world)
    try:
        device, error = resolve_device(spec, local_rank, local_world), None
    except UserError as e:
        device, error = None, e
    # a rank that fails or differs would leave the others waiting forever in DDP: all ranks stop together
    kind = -1 if device is None else ["cpu", "cuda", "mps"].index(device.type)
    if world > 1 and not same_on_all_ranks(kind) and error is None:
        error = UserError(f"train.device={spec} gives different devices on different processes (this one: "
                          f"{device}); set train.device=cpu or train.device=cuda")
    if error is not None:
        raise error
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and the CUDA RNG use the current device
    return device


def _seed_everything(seed: int) -> None:
    """Seed every global RNG the training process may touch (torch, Python, NumPy): --seed decides it all."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


class _CSVLog:
    FIELDS = ["step", "split", "loss", "nelbo", "masked_ce", "bpc", "lr", "grad_norm", "tokens_per_s",
              "elapsed_s"]

    def __init__(self, path: Path):
        self.path = path
        if not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)
        with open(path, newline="") as f:
            self.rows = max(sum(1 for _ in csv.reader(f)) - 1, 0)  # data rows, without the header

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k, "")) for k in self.FIELDS])
        self.rows += 1

    @classmethod
    def truncate(cls, path: Path, rows: int) -> None:
        """Keep the header and the first `rows` data rows (those written before the resumed checkpoint)."""
        if not path.exists():
            return
        with open(path, newline="") as f:
            lines = f.read().splitlines(keepends=True)[1: rows + 1]
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]  # a row cut short by a kill
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerow(cls.FIELDS)  # the header too may have been cut short
            f.write("".join(lines))
        os.replace(tmp, path)


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v
