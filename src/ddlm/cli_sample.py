"""`ddlm sample DIR`: draw samples from a run or model directory (thin over SequenceModel.generate)."""

from __future__ import annotations

import json
import sys

from .cli_common import (_add_device, _add_threads, _device, _float, _plural, _positive_int, _seed, _threads,
                         add_planner_options, check_planner, planner_options_from)
from .errors import UserError
from .guidance.cli import add_arguments as add_steering_arguments, options_from as steering_options

SAMPLE_THREADS = 1  # measured on a busy 2-core machine: 1 thread ran 4 x 256 tokens 2.3-4x faster than 2 (README)


def cmd_sample(args) -> int:
    from .pipeline import SequenceModel, draw_seed

    _threads(args.threads, SAMPLE_THREADS)
    model = SequenceModel.from_pretrained(args.model, map_location=_device(args))
    check_planner(args, model.cfg)
    planner_options = planner_options_from(args, model.cfg)  # an unknown key: one line, before any sampling
    seed = draw_seed() if args.seed is None else args.seed
    options = dict(n=args.n, length=args.length, steps=args.steps, sampler=args.sampler, planner=args.planner,
                   planner_options=planner_options, temperature=args.temperature, prompt=args.prompt, seed=seed,
                   batch_size=args.batch_size, kv_cache=args.kv_cache, kv_refresh=args.kv_refresh or 0,
                   compile=args.compile, progress=not args.json and sys.stderr.isatty())  # a bar only for a person
    if args.max_length is not None:  # texts of their own lengths: each stops at its <eos> (sampling/stops.py)
        options["max_length"] = args.max_length
    options.update(steering_options(args))  # --cond, --guidance, --reward with --svdd / --smc (guidance/cli.py)
    if args.infill is not None:  # [MASK] spans (ddlm/infill.py): one call, every sample kept
        if args.kv_cache or args.compile:
            raise UserError("--infill takes neither --kv-cache nor --compile")
        del options["kv_cache"], options["kv_refresh"], options["compile"], options["progress"]
        options.update(infill=args.infill, span_lengths=args.span_lengths)
    elif args.span_lengths is not None:
        raise UserError("--span-lengths is the range of lengths tried for the [MASK] of --infill; add --infill TEXT")
    context = model.cfg.model.max_len
    if args.kv_cache and (args.length or context) <= context:
        print(f"note: --kv-cache has no effect at --length {args.length or context} (one window of the "
              f"{context}-token context, no finished prefix)", file=sys.stderr)
    note = None if args.seed is not None else f"note: seed {seed} (add --seed {seed} to draw these samples again)"
    shown = None  # --show on a terminal: the samples drawn at every step (ddlm.show), then printed as usual
    if getattr(args, "show", False) and sys.stdout.isatty() and getattr(args, "infill", None) is None:
        shown = _show(model, options)
    if args.json or args.infill is not None:  # one object: every sample is kept (generate refuses a result
        out = shown if shown is not None else model.generate(**options)  # that cannot fit in memory)
        if note:
            print(note, file=sys.stderr)
        if not args.json:
            return _print_infill(out)
        obj = {"samples": out.texts, "nfe": out.nfe, "row_evals": out.row_evals,
               "seconds": round(out.seconds, 4), "seed": out.seed}
        if out.lengths is not None:  # each sample's length in tokens (before its <eos>) and in characters
            obj["lengths"] = [{"tokens": int(k), "chars": len(t)} for k, t in zip(out.lengths, out.texts)]
        if out.span_lengths is not None:
            obj["span_lengths"] = out.span_lengths.tolist()
        print(json.dumps(obj))
        return 0
    count = nfe = row_evals = length = 0
    seconds, stopped = 0.0, False
    # iter_generate checks every option now; samples come batch by batch
    parts = [shown] if shown is not None else model.iter_generate(**options)
    if note:
        print(note, file=sys.stderr)
    for part in parts:  # written batch by batch: --n is bounded by time, not memory
        for text in part.texts:
            count += 1
            print(f"--- sample {count} ---\n{text}")
        sys.stdout.flush()
        nfe, row_evals, seconds = nfe + part.nfe, row_evals + part.row_evals, seconds + part.seconds
        length = part.tokens.shape[1]
        stopped = part.lengths is not None  # generate cut the rows at <eos> (max_length, or a skip model's own)
    each = f"at most {args.max_length or length} tokens" if stopped else f"{_plural(length, 'token')} each"
    print(f"--- {_plural(count, 'sample')}, {each}, NFE {nfe} "
          f"({_plural(row_evals, 'row evaluation')}), {seconds:.2f} s")
    return 0


def _print_infill(out) -> int:
    for i, text in enumerate(out.texts):
        span = "" if out.span_lengths is None else f" (span of {int(out.span_lengths[i])} tokens)"
        print(f"--- sample {i + 1}{span} ---\n{text}")
    print(f"--- {_plural(len(out.texts), 'sample')}, NFE {out.nfe} ({_plural(out.row_evals, 'row evaluation')}), "
          f"{out.seconds:.2f} s")
    return 0


def _show(model, options):
    """The samples redrawn in place at every step; returns the final SampleOutput (generate's)."""
    from .show import show_text_steps

    stream = model.stream(**{k: v for k, v in options.items() if k not in ("compile", "progress")})
    return show_text_steps(stream, model, header=lambda k: f"--- sample {k + 1} ---").output


def register(sub) -> None:
    """Add `ddlm sample` to the subcommands `sub`."""
    from .pipeline import DEFAULT_BATCH_SIZE
    from .sampling import sampler_names
    from .sampling.planners import planner_names

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
    add_planner_options(s)
    s.add_argument("--temperature", type=_float, help="token temperature (0 = greedy)")
    s.add_argument("--prompt", help="text the samples start with")
    add_steering_arguments(s)
    s.add_argument("--max-length", type=_positive_int, metavar="N", help="a model trained on records: each "
                   "sample stops at its end-of-text token (<eos>) within N tokens, so samples have their own "
                   "lengths (--json reports them); instead of --length")
    s.add_argument("--infill", metavar="TEXT", help="fill the [MASK] spans of TEXT: [MASK:k] is k tokens, [MASK] "
                   "a span of unknown length (a model trained on records): each length of --span-lengths is "
                   "filled and the fill most likely under the model's bound is kept")
    s.add_argument("--span-lengths", metavar="LO:HI", help="lengths tried for the [MASK] of --infill "
                   "(default 1:32)")
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
    s.add_argument("--show", action="store_true", help="on a terminal, redraw the samples at every step (masks as "
                   "a dim _, each step's new tokens highlighted), then print the usual output; elsewhere no effect")
    s.set_defaults(func=cmd_sample)
