"""`ddlm molecules score FILE`: the MOSES metrics of a file of SMILES; `ddlm eval DIR --task molecules`: sample
a trained model and print the same metrics (with the NFE and time of sampling).

Imports only the shared CLI helpers (`ddlm.cli_common`), never `ddlm.cli`, which imports this module to
register the `molecules` command."""

from __future__ import annotations

import json
import sys
import time

from ddlm.errors import UserError

EVAL_SAMPLES = 1000
"molecules sampled by `ddlm eval --task molecules` unless --samples says otherwise"


def _print(m: dict, what: str, as_json: bool) -> None:
    from .score import format_report

    if as_json:
        print(json.dumps(m))
    else:
        print(format_report(m, what))


def cmd_score(args) -> int:
    from ddlm.cli_common import _threads

    from .score import read_smiles_file, score_smiles

    samples = read_smiles_file(args.file)  # before anything slow: a missing file is one line at once
    _threads(args.threads, 1)
    m = score_smiles(samples, fcd=not args.no_fcd, seed=args.seed)
    m["file"] = str(args.file)
    _print(m, str(args.file), args.json)
    return 0


def eval_molecules(model, args) -> int:
    """`ddlm eval DIR --task molecules`: sample --samples molecules (default EVAL_SAMPLES) and score them."""
    from ddlm.cli_common import check_planner, planner_options_from

    from .metrics import _rdkit
    from .score import references, sampled_smiles, score_smiles

    tok = model.tokenizer
    if getattr(tok, "eos_id", None) is None:
        raise UserError(f"{args.model} was trained on a stream, not on records (its tokenizer has no <eos>); "
                        "train it with `ddlm train --preset molecules`")
    n = args.samples or EVAL_SAMPLES
    check_planner(args, model.cfg)  # a --planner the sampler would ignore: one line before any sampling
    planner_options = planner_options_from(args, model.cfg)
    _rdkit()  # RDKit and the MOSES references before sampling: a missing package fails at once, in one line
    refs = references()  # the same reference (seed 0) whatever the sampling seed
    length = model.cfg.model.max_len
    start = time.perf_counter()
    # max_length: each row stops at its first <eos> (AR rows stop early, saving network calls)
    out = model.generate(n, steps=args.steps, sampler=args.sampler, planner=args.planner,
                         seed=args.seed, batch_size=args.batch_size, decode=False, max_length=length,
                         planner_options=planner_options, progress=not args.json and sys.stderr.isatty())
    seconds = time.perf_counter() - start
    smiles = sampled_smiles(model, out.tokens)
    if args.smiles_out:
        with open(args.smiles_out, "w", encoding="utf-8") as f:
            f.writelines(s + "\n" for s in smiles)
    m = score_smiles(smiles, fcd=not args.no_fcd, refs=refs)
    m.update(family=model.family.name, nfe=out.nfe, seconds_sampling=seconds, seed=out.seed,
             length=length, steps=args.steps or getattr(model.cfg.sample, "steps", None),
             sampler=args.sampler or model.cfg.sample.sampler)
    if m["sampler"] == "planned":
        m.update(planner=args.planner or model.cfg.sample.planner, planner_options=planner_options)
    _print(m, f"{model.family.name} samples ({out.nfe} NFE, {seconds:.1f} s)", args.json)
    return 0


def add_eval_options(parser) -> None:
    """The `ddlm eval` options of task molecules."""
    parser.add_argument("--no-fcd", action="store_true", help="task molecules: skip FCD (about 20 s per "
                        "5,000 molecules on one thread)")
    parser.add_argument("--smiles-out", metavar="FILE", help="task molecules: also write the samples to FILE, "
                        "one SMILES a line")


def register(sub) -> None:
    """Add `ddlm molecules score` to the subcommands `sub`."""
    from ddlm.cli_common import _add_threads, _Parser, _seed

    m = sub.add_parser("molecules", help="the MOSES molecules task: score a file of SMILES")
    msub = m.add_subparsers(dest="molecules_command", parser_class=_Parser, metavar="COMMAND")
    msub.required = True
    s = msub.add_parser("score", help="validity, uniqueness, novelty, IntDiv, FCD/SNN/Frag/Scaf against Test and "
                        "property means of a file of SMILES (one per line; needs RDKit: pip install 'ddlm[molecules]')")
    s.add_argument("file", metavar="FILE", help="SMILES, one per line (first field; a MOSES csv works too)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--no-fcd", action="store_true", help="skip FCD (about 20 s per 5,000 molecules)")
    s.add_argument("--seed", type=_seed, default=0, help="seed of the random MOSES test sample FCD, SNN, Frag "
                   "and Scaf are measured against (default 0)")
    _add_threads(s, 1)
    s.set_defaults(func=cmd_score)
