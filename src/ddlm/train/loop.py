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
log.csv is cut back to the rows of steps up to the checkpoint's (the final validation row of a finished run
included), so a killed-and-resumed run has exactly the rows of an uninterrupted one; `elapsed_s` goes on from
the time saved in the checkpoint (only tokens_per_s and elapsed_s differ). The run directory, its marker and
what `--overwrite` may delete: rundir.py. Ctrl-C and the memory estimate: guard.py.

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
import math
import os
import sys
import time
from pathlib import Path

import torch

from ..config import RunConfig
from ..data.batches import as_batch
from ..errors import UserError
from ..guidance.conditions import check_dropout, classes_from_data, drop_labels, dropout_generator
from ..pipeline import SequenceModel
from .checkpoint import (is_complete, list_checkpoints, load_latest, remove_partial_writes, rng_state,
                         save_checkpoint, set_rng_state)
from .data import prepare_data, validation_blocks  # noqa: F401  (imported from here by older code)
from .device import backend_for, place as _place
from .distributed import any_rank, barrier, mean_over_ranks, no_sync, reseed_step, step_seed
from .guard import SignalGuard, check_memory, validate_config
from .optim import EMA, make_optimizer, set_lr
from .rundir import MARKER, CSVLog, check_run_dir, clear_run_dir, config_mismatch, write_marker

FINAL_T_SAMPLES = 4  # t-samples of the final validation: enough passes for a 95% interval on the bound


class TrainingStopped(UserError):
    """Training stopped early (NaN loss, interrupted): the last good checkpoint is kept."""


class Interrupted(TrainingStopped):
    """Stopped by Ctrl-C or SIGTERM after a checkpoint; the CLI exits with status 130."""


def _objective_state(objective):
    """What an objective keeps between steps (progressive masking's pool of chains), or None."""
    return objective.state_dict() if hasattr(objective, "state_dict") else None


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
        # before any data preparation, so an impossible size fails at once
        check_memory(cfg, self.device, world, warn=(lambda m: print(m, file=sys.stderr)) if rank == 0 else None)
        if cfg.train.tensorboard:  # a missing package is said before the run directory is touched
            from .tensorboard import check_tensorboard
            check_tensorboard()
        clear = not _resuming and check_run_dir(self.out, overwrite=overwrite)  # on every rank: all stop together
        barrier()  # every rank has looked at the run directory before rank 0 clears or writes it
        if clear and rank == 0:
            clear_run_dir(self.out)  # only the entries an earlier run wrote
        if rank == 0:  # now, before minutes of data preparation, so a bad --out fails at once
            try:
                self.out.mkdir(parents=True, exist_ok=True)
                if not (self.out / MARKER).exists():  # a new run, or one from before the marker
                    write_marker(self.out)
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
        if getattr(self.batches, "class_names", ()):  # labelled records: n_classes and the names from the data
            from ..families import build_family
            causal = build_family(cfg.process, tokenizer.vocab_size).causal
            cfg = self.cfg = classes_from_data(cfg, self.batches.class_names, causal)
        _seed_everything(cfg.train.seed)
        self.model = SequenceModel(cfg, tokenizer).to(self.device)  # initialised on the CPU, then moved
        if self.model.draws_lengths():  # data.padding=skip: the lengths its sampler draws from, saved with it
            self.model.length_counts = torch.bincount(self.batches.masks.sum(-1), minlength=cfg.model.max_len + 1)
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
        self.elapsed0 = 0.0  # seconds of training before this process: a resumed log's elapsed_s goes on
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
    def resume(cls, out, *, max_steps: int | None = None, **kwargs) -> "Trainer":
        """Continue the run in `out` from its newest intact checkpoint. `max_steps` extends (or shortens, down to
        the checkpoint's step) the run and is saved in its config.yaml; the warm-up + cosine learning-rate
        schedule is a function of max_steps, so it is recomputed for the new total from the resumed step on."""
        from ..config import apply_overrides, load_preset

        out = Path(out)
        if not (out / "config.yaml").is_file():
            raise UserError(f"{out} is not a run directory (no config.yaml); start a run with ddlm train --preset")
        cfg = load_preset(str(out / "config.yaml"))
        if max_steps is not None:
            cfg = apply_overrides(cfg, [f"train.max_steps={max_steps}"])
        trainer = cls(cfg, out, _resuming=True, **kwargs)
        state = load_latest(out, log=trainer.log)
        if state is None:
            damaged = [p.name for p in list_checkpoints(out) if is_complete(p)]
            if damaged:  # real corruption, not an interrupted write: let the user decide
                raise UserError(f"no intact checkpoint in {out}/checkpoints ({', '.join(damaged)} failed the "
                                f"checksum); restore them, or delete {out}/checkpoints to resume from step 0")
            trainer.log(f"no complete checkpoint in {out} yet; starting from step 0")
        else:
            differ = config_mismatch(state.get("config") or {}, cfg)
            if differ:  # e.g. an mdlm checkpoint in an rdm-absorbing run: it would load and train on silently
                raise UserError(f"the checkpoint in {out}/checkpoints does not fit {out}/config.yaml: "
                                f"{'; '.join(differ)}; undo the edit of config.yaml, or start a new run")
            if max_steps is not None and max_steps < state["step"]:
                raise UserError(f"--max-steps {max_steps} is below the step of the checkpoint in {out} "
                                f"({state['step']}); give at least {state['step']}")
            trainer.load_state(state)
            trainer.log(f"resuming {out} from step {trainer.step}")
        if trainer.rank == 0:
            CSVLog.truncate(out / "log.csv", trainer.step)  # the rows of steps the checkpoint has seen
            remove_partial_writes(out)
            if max_steps is not None:  # a later plain --resume continues to the new total
                with _disk_errors(out):
                    tmp = out / "config.yaml.tmp"
                    cfg.save(tmp)
                    os.replace(tmp, out / "config.yaml")
        return trainer

    def state(self) -> dict:
        return {"step": self.step, "model": self.backbone.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None, "noise": self.noise.get_state(),
                "rng": rng_state(), "config": self.cfg.to_dict(),
                "log_rows": self._logger.rows if self._logger else 0, "elapsed_s": self._elapsed(),
                "objective": _objective_state(self.model.family.objective)}

    def _elapsed(self) -> float:
        """Seconds of training so far, over every process that worked on this run."""
        t0 = getattr(self, "_t0", None)
        return self.elapsed0 + (time.perf_counter() - t0 if t0 is not None else 0.0)

    def load_state(self, state: dict) -> None:
        try:
            self.backbone.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.ema and state["ema"] is not None:
                self.ema.load_state_dict(state["ema"])
            self.step = state["step"]
            self.elapsed0 = float(state.get("elapsed_s", 0.0))  # absent in checkpoints of older versions
            if state["noise"].numel() == self.noise.get_state().numel():
                self.noise.set_state(state["noise"])
            elif not self.reseed_each_step:  # written by a run on another device: its generator does not fit
                self.log("the checkpoint's training noise comes from a run on another device; the noise goes on "
                         "from a seed of (seed, step), so this run will not equal one that never moved")
                self.noise.manual_seed(step_seed(self.cfg.train.seed, self.step, self.rank))
            set_rng_state(state["rng"])
            objective = self.model.family.objective
            if state.get("objective") is not None and hasattr(objective, "load_state_dict"):  # PUMA's chains
                objective.load_state_dict({k: v.to(self.device) if torch.is_tensor(v) else v
                                           for k, v in state["objective"].items()})
        except (KeyError, RuntimeError, ValueError, TypeError) as e:  # config.yaml edited to another model
            first = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()[:160]
            raise UserError(f"the checkpoint in {self.out}/checkpoints does not fit {self.out}/config.yaml "
                            f"({first}); undo the edit of config.yaml, or start a new run") from None

    # ---- the loop ----------------------------------------------------------------------------------------
    def run(self) -> SequenceModel:
        cfg = self.cfg.train
        stop_now = (f"ddlm train: stopped at once (second signal); the last complete checkpoint in "
                    f"{self.out}/checkpoints is kept, continue with `ddlm train --resume {self.out}`")
        guard = SignalGuard(stop_now if self.rank == 0 else "")
        bar = None
        if self.rank == 0:
            self.log(self._start_line())
            for line in getattr(self.batches, "report_lines", ()):  # records: packed, skipped or cut, once
                self.log(line)
            if self.progress and sys.stderr.isatty():  # a bar in a terminal; plain lines in a log file
                from tqdm import tqdm
                bar = tqdm(total=cfg.max_steps, initial=self.step, desc="training", dynamic_ncols=True)
        self._t0 = time.perf_counter()
        try:
            with guard:
                self._loop(cfg, guard.flag, bar)
        finally:
            if bar is not None:
                bar.close()
        return self.export_model()

    def _loop(self, cfg, interrupted: list, bar) -> None:
        objective = self.model.family.objective
        stopped = False
        logger = self._logger = CSVLog(self.out / "log.csv") if self.rank == 0 else None
        if logger is not None and cfg.tensorboard:  # the same rows as TensorBoard scalars (train/tensorboard.py)
            from .tensorboard import TensorBoardLog
            logger = self._logger = TensorBoardLog(logger, self.out / "tensorboard")
        tokens = 0
        self.backbone.train()
        while self.step < cfg.max_steps:
            lr = set_lr(self.optimizer, self.step, cfg)
            # a Batch (tokens (B / world, L), loss mask, condition); a source's bare tensor counts everywhere
            batch = as_batch(self.batches.batch(self.step, self.rank, self.world)).to(self.device)
            if batch.cond is not None:  # label dropout of (seed, step, rank): null labels for classifier-free guidance
                batch = drop_labels(batch, check_dropout(cfg.cond_dropout), dropout_generator(cfg.seed, self.step,
                                                                                              self.rank))
            if self.reseed_each_step:  # noise of (seed, step, rank): a resume needs no generator state
                reseed_step(self.noise, cfg.seed, self.step, self.rank)
            self.optimizer.zero_grad(set_to_none=True)
            metrics = {}
            chunks = batch.chunk(cfg.grad_accum)  # Batch.chunk: every field split by rows
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
                    speed = tokens / max(time.perf_counter() - self._t0, 1e-9)  # this process's tokens/s
                    logger.write(step=self.step, split="train", **metrics, lr=lr, grad_norm=float(grad_norm),
                                 tokens_per_s=speed, elapsed_s=self._elapsed())
                    if self.progress and bar is None:
                        self.log(f"step {self.step}/{cfg.max_steps}: loss {metrics['loss']:.4f}, lr {lr:.2e}, "
                                 f"{speed:,.0f} tokens/s")
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
            raise Interrupted(f"interrupted at step {self.step}; checkpoint written, continue with "
                              f"`ddlm train --resume {self.out}`")
        if self.rank == 0:
            # a finished run that is resumed already has its final validation row: recompute, do not repeat it
            done = logger.last is not None and logger.last["split"] == "val" and logger.last["step"] == str(self.step)
            self.final_metrics = self._validate(logger if not done else None, bar, t_samples=FINAL_T_SAMPLES)

    def _start_line(self) -> str:
        """One line that says what is about to be trained, on what, and for how long."""
        cfg, n = self.cfg, self.backbone.n_params()
        threads = torch.get_num_threads()
        blocks = getattr(self.batches, "blocks", None)
        corpus = (f"corpus {blocks.numel():,} tokens" if blocks is not None else "generated data") + \
            f" (+ {self.val_blocks.numel():,} validation)"
        if hasattr(self.batches, "report_lines"):  # records: one per row, padding included in the token counts
            corpus = f"{len(blocks):,} records (+ {len(self.val_blocks):,} validation), one per row"
        steps = (f"steps {self.step} -> {cfg.train.max_steps}" if self.step else f"{cfg.train.max_steps} steps")
        return (f"training {self.model.family.name}: {n / 1e6:.2f}M parameters, {self.device}"
                f"{f' x {self.world} processes' if self.world > 1 else ''}, {threads} thread"
                f"{'s' if threads != 1 else ''}, {corpus}, {steps} of {cfg.train.batch_size} x "
                f"{cfg.model.max_len} tokens")

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
        exported.length_counts = self.model.length_counts
        return exported.eval()

    def _log_step(self, cfg) -> bool:
        """A training row is logged every train.log_every steps (0: only the last step's)."""
        return bool(cfg.log_every) and self.step % cfg.log_every == 0

    def _validate(self, logger, bar, t_samples: int = 1) -> dict:
        gpus = [self.device.index] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus):  # validation must not move the training RNG
            return self._validate_unforked(logger, bar, t_samples)

    def _validate_unforked(self, logger, bar, t_samples: int) -> dict:
        """Validation bound on the first eval_batches * batch_size validation blocks; a row in `logger` (if
        given). The final validation averages several t-samples, for a 95% interval (metrics["ci95"])."""
        from ..eval.elbo import evaluate_nll

        model = self.export_model()
        n = self.cfg.train.eval_batches * self.cfg.train.batch_size
        metrics = evaluate_nll(model, self.val_blocks, batch_size=self.cfg.train.batch_size, t_samples=t_samples,
                               seed=1234, max_blocks=n)
        if logger is not None:
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


def _seed_everything(seed: int) -> None:
    """Seed every global RNG the training process may touch (torch, Python, NumPy): --seed decides it all."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
