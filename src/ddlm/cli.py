"""`ddlm train | sample | eval | presets`: thin functions over the library.

Every user mistake ends as one line on stderr and exit status 2; no tracebacks for bad input.
"""

from __future__ import annotations

import argparse
import sys

# the shared argument types and helpers (other modules and the tests import them from here); `ddlm sample` and
# `ddlm eval` live in cli_sample.py and cli_eval.py
from .cli_common import (_add_device, _add_threads, _device, _float, _int_at_least, _nonneg_int,  # noqa: F401
                         _Parser, _plural, _positive_int, _seed, _threads)
from .cli_eval import EVAL_THREADS, TASKS_HELP, cmd_eval  # noqa: F401
from .cli_sample import SAMPLE_THREADS, cmd_sample  # noqa: F401
from .errors import UserError


# ---- train ------------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from .train import distributed

    from .train.loop import Interrupted

    env = distributed.from_env()  # torchrun's RANK/WORLD_SIZE/LOCAL_RANK; rank 0 of 1 without them
    try:
        distributed.init(env)
        code = _train(args, env)
        distributed.barrier()  # rank 0 has written its last checkpoint and validated before any rank leaves
        return code
    except Interrupted as e:  # Ctrl-C / SIGTERM: a checkpoint is written; 130 as for any interrupted command
        if env.rank == 0:
            print(f"ddlm train: {e}", file=sys.stderr)
        return 130
    except UserError:
        if env.rank != 0:
            return 2  # every rank meets the same mistake (or stops together); rank 0 alone says so
        raise
    except KeyboardInterrupt:
        if env.rank != 0:
            return 130  # torchrun passes a Ctrl-C on to every worker; rank 0 alone says so
        raise
    finally:
        distributed.shutdown()


def _train(args, env) -> int:
    import time

    from .config import apply_overrides, load_preset
    from .train.loop import Trainer

    start = time.perf_counter()
    ddp = {"rank": env.rank, "world": env.world}
    if env.rank != 0:
        ddp["log"] = lambda *a, **k: None  # one copy of each message, from rank 0
    if env.world > 1:
        import torch
        from .train.distributed import threads_per_rank
        torch.set_num_threads(threads_per_rank(env))  # train.threads, if set, overrides this
    if args.resume:
        given = [f"--{f.replace('_', '-')}" for f in ("preset", "data", "records", "process", "tokenizer", "out",
                                                      "batch_size", "ckpt_every", "seed", "overwrite")
                 if getattr(args, f) not in (None, False)]
        if given or args.overrides:
            raise UserError(f"--resume continues a run with its saved config; do not combine it with "
                            f"{', '.join(given) or 'overrides'} (only --max-steps may change; edit "
                            f"{args.resume}/config.yaml to change anything else)")
        trainer = Trainer.resume(args.resume, max_steps=args.max_steps, progress=not args.quiet, **ddp)
    else:
        cfg = load_preset(args.preset or "quick")
        overrides = list(args.overrides)
        for flag, key in _FLAG_FIELDS:
            value = getattr(args, flag)
            if value is None:
                continue
            clash = [o for o in args.overrides if o.split("=", 1)[0].strip() == key]
            if clash:  # neither silently wins
                raise UserError(f"--{flag.replace('_', '-')} {value} and {clash[0]} both set {key}; give only one")
            overrides.append(f"{key}={value}")
        cfg = apply_overrides(cfg, overrides)
        from .families import configure
        cfg = configure(cfg, overrides)  # e.g. D3PM switches on model.time_conditioning
        out = args.out or f"runs/{args.preset or 'quick'}"
        trainer = Trainer(cfg, out, overwrite=args.overwrite, progress=not args.quiet, **ddp)
    model = trainer.run()
    if env.rank != 0:
        return 0
    m = getattr(trainer, "final_metrics", {})
    nan = float("nan")
    bound = "exact NLL" if m.get("exact") else f"NELBO bound ± 95% over {m.get('passes', 0)} t-samples"
    print(f"trained {trainer.step} step{'s' if trainer.step != 1 else ''} into {trainer.out} in "
          f"{time.perf_counter() - start:.1f} s ({model.backbone.n_params() / 1e6:.2f}M parameters); validation "
          f"{m.get('nll', nan):.4f}" + ("" if m.get("exact") else f" ± {m.get('ci95', nan):.4f}") +
          f" nats/token ({bound}), {m.get('bpc', nan):.4f} bpc")
    return 0


# `ddlm train` options that set a config field (a flag and an override of the same field are refused)
_FLAG_FIELDS = (("data", "data.source"), ("records", "data.records"), ("process", "process.name"),
                ("tokenizer", "data.tokenizer"),
                ("max_steps", "train.max_steps"), ("ckpt_every", "train.ckpt_every"), ("seed", "train.seed"),
                ("batch_size", "train.batch_size"))


def cmd_presets(args) -> int:
    from .config import load_preset, preset_names

    for name in preset_names():
        c = load_preset(name)
        print(f"{name:12s} {c.process.name:5s} {c.model.n_layers}x{c.model.d_model} ctx {c.model.max_len} "
              f"data {c.data.source} ({c.data.tokenizer}) steps {c.train.max_steps} batch {c.train.batch_size}")
    return 0


# ---- parser ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .config import field_help
    from .families import FAMILIES

    p = _Parser(prog="ddlm", description="Discrete diffusion language models: train, sample, evaluate.")
    p.add_argument("--version", action="version", version=f"ddlm {_version()}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    sub.required = True

    fields = "\n".join(f"  {name}={value!r:<10}  {doc}" + (f" [quick sets it; default {default!r}]"
                                                            if value != default else "")
                       for name, doc, default, value in field_help("quick"))
    t = sub.add_parser("train", help="train a model into a run directory",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="overrides (section.field=value, values parsed as YAML); the values shown are those "
                       "of the default\npreset, quick ([quick sets it] marks where it differs from the built-in "
                       "default; --process\nd3pm-* and rdm-multinomial also set model.time_conditioning=True). "
                       "A flag and an override\nof the same field (--max-steps 3 train.max_steps=5) are refused. "
                       "A preset file may start\nfrom a named preset with `base: quick` and set only what "
                       "differs.\n" + fields)
    t.add_argument("--preset", help="named preset (see `ddlm presets`) or a YAML file; default quick")
    t.add_argument("--data", "--corpus", help="corpus: kjv (default), shakespeare, a text file or a glob")
    t.add_argument("--records", metavar="KIND", help="train on records, one per row with <eos> and <pad>: lines "
                   "(a file: one per line), labelled-lines (a file of LABEL<TAB>RECORD lines: class labels), "
                   "verses (kjv), lines or speeches (shakespeare); sets data.records")
    t.add_argument("--process", help=f"model family: {', '.join(FAMILIES)} (D3PM and rdm-multinomial switch on "
                   "model.time_conditioning; see ddlm.families)")
    t.add_argument("--tokenizer", choices=["char", "byte", "bpe", "smiles"], help="tokenizer built from the corpus "
                   "(smiles: one token per atom, bond, branch or ring label, for --data moses)")
    t.add_argument("--out", help="run directory (default runs/PRESET)")
    t.add_argument("--max-steps", type=_positive_int, help="optimiser steps; with --resume, extends (or "
                   "shortens) the run and saves the new total in its config.yaml. The warm-up + cosine learning-"
                   "rate schedule is a function of max_steps, so it is recomputed for the new total: an extended "
                   "run's learning rate jumps from the old end value up to the new schedule's value at the "
                   "resumed step, then decays to train.lr * train.min_lr_ratio at the new end")
    t.add_argument("--batch-size", type=_positive_int, help="sequences per step")
    t.add_argument("--ckpt-every", type=_nonneg_int, help="checkpoint every N steps")
    t.add_argument("--seed", type=_seed, help="random seed")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last good checkpoint "
                   "(refused if the checkpoint's model or objective differs from DIR/config.yaml)")
    t.add_argument("--overwrite", action="store_true", help="replace an earlier ddlm run in --out (only the "
                   "files ddlm writes; a folder holding anything else is refused)")
    t.add_argument("--quiet", action="store_true", help="no progress bar or progress lines (a bar in a terminal, "
                   "otherwise one line per train.log_every steps)")
    t.add_argument("overrides", nargs="*", metavar="section.field=value", help="override any config field")
    t.set_defaults(func=cmd_train)

    from .cli_sample import register as register_sample
    register_sample(sub)
    from .cli_eval import register as register_eval
    register_eval(sub)
    from .tasks.sudoku.cli import register as register_sudoku
    register_sudoku(sub)
    from .tasks.molecules.cli import register as register_molecules
    register_molecules(sub)
    from .guidance.cli_finetune import register as register_finetune
    register_finetune(sub)
    from .cli_export import register as register_export
    register_export(sub)
    from .cli_plot import register as register_plot
    register_plot(sub)
    from .cli_serve import register as register_serve
    register_serve(sub)

    pr = sub.add_parser("presets", help="list the named presets")
    pr.set_defaults(func=cmd_presets)
    return p


def _version() -> str:
    """The installed distribution's version, or the package's own when running from a source tree."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("ddlm")
    except PackageNotFoundError:
        from . import __version__
        return __version__


def main(argv=None) -> int:
    command = "ddlm"
    try:  # Ctrl-C anywhere (imports while building the parser, model loading, sampling) exits 130
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        command = f"ddlm {args.command}"
        if extra:  # `ddlm train --out DIR a.b=1 --quiet c.d=2`: overrides after an option are overrides too
            if args.command == "train" and all("=" in x and not x.startswith("-") for x in extra):
                args.overrides = [*args.overrides, *extra]
            else:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args)
    except UserError as e:
        print(f"{command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ddlm sample DIR --n 1000 | head`: the reader has all it wants
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0


def program() -> None:
    """The `ddlm` program (console script and `python -m ddlm`): main(), then exit with its status. After an
    interrupted command (130) the process is only shutting down: a further Ctrl-C or SIGTERM then ends it at once
    instead of raising KeyboardInterrupt inside the interpreter's clean-up (a traceback). Not in main(), which
    tests and other programs call in their own process."""
    code = main()
    if code == 130:
        import os
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: os._exit(130))
    sys.exit(code)


if __name__ == "__main__":
    program()
