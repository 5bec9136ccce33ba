"""NFE and wall time of ancestral vs cached sampling, and of confidence-threshold parallel decoding, side by side.

    python benchmarks/sampling.py [--model DIR] [--judge DIR|smollm2] [--repeats 3] [--json]
    python benchmarks/sampling.py --model DIR --remask-only --judge AR_DIR [--remask-steps 128,256,512]

Without --model, a randomly initialised model of the `quick` preset's shape is used: the network's cost
does not depend on its weights, and the cache's savings depend only on how often tokens change, which for
the ancestral sampler is set by the schedule, not the weights. Medians of --repeats runs after a warm-up,
all in one process.

Parallel decoding (batch 8 x 128, --parallel-batch): ancestral with T = 128 steps against the planned sampler committing every
masked position whose top probability reaches a threshold (at least one per row, Fast-dLLM style), which
stops as soon as nothing is masked, so its NFE adapts to the model's confidence; and fixed-k top_prob
with fewer steps. Quality is the judge's NLL per judge token of the samples (--judge: an AR model directory
or smollm2; only meaningful with a trained --model), with their unigram entropy (nats) beside it: a
threshold that lowers NLL by repeating tokens shows up as lower entropy.

Sliding blocks (--blocks): seconds per token of one row at 256, 512, 1024 and 2048 tokens, plain windows
(every step runs the whole window) against the prefix KV cache (generate(kv_cache=True): the finished prefix
runs once per window, the other steps only the new block), their ratio 2048/256 and the KV speed-up; then
the cost of the approximation: the NLL per token of samples of both (--judge, else the model's own NELBO)
with their unigram entropy.

Re-masking (--remask, --remask-only; sampling_remask.py): judge NLL and unigram entropy of ancestral vs each
ReMDM schedule at 128, 256 and 512 steps, --samples x --length tokens per row, one seed for every row.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import ddlm  # noqa: E402
from ddlm.data.tokenizers import CharTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampling_remask import add_arguments, check_arguments, print_remask, remask_table  # noqa: E402

SHAPES = [(1, 128, 1024), (8, 128, 128)]  # (batch, length, steps)
# (name, planner or None for ancestral, planner options, steps): steps is the most the loop may take
PARALLEL = [("ancestral T=128", None, {}, 128), ("top_prob T=32", "top_prob", {}, 32),
            ("top_prob T=16", "top_prob", {}, 16)] + [
    (f"confidence >= {tau}", "confidence", {"threshold": tau}, 128) for tau in (0.99, 0.9, 0.7, 0.5)]


def load(model_dir):
    if model_dir:
        return ddlm.SequenceModel.from_pretrained(model_dir)
    tok = CharTokenizer.from_text("".join(chr(c) for c in range(32, 127)) + "\n")
    torch.manual_seed(0)
    return ddlm.SequenceModel(ddlm.load_preset("quick"), tok).eval()


def run(model, n, length, steps, sampler, repeats, seed=0):
    model.generate(n=n, length=length, steps=min(steps, 16), sampler=sampler, seed=seed, decode=False)  # warm-up
    outs = [model.generate(n=n, length=length, steps=steps, sampler=sampler, seed=seed + r, decode=False)
            for r in range(repeats)]
    return statistics.median(o.nfe for o in outs), statistics.median(o.seconds for o in outs)


def parallel(model, judge, n, length, repeats, seed=0):
    """Rows (name, NFE, seconds, judge NLL or None, entropy) for the PARALLEL decoders, medians of repeats."""
    from ddlm.eval.gen_ppl import score_texts, unigram_entropy
    from ddlm.sampling import options as sampling_options
    from ddlm.sampling.planners import get_planner

    rows = []
    for name, planner, popts, steps in PARALLEL:
        opts = sampling_options(model.family, "planned" if planner else "ancestral", planner or "random", steps, 1.0)
        if planner:
            opts["planner"] = get_planner(planner, **popts)

        def draw(r, steps_=steps):
            g = torch.Generator().manual_seed(seed + r)
            return model.family.sample(model.backbone, model.process, n, length, **{**opts, "steps": steps_},
                                       generator=g)

        draw(0, min(steps, 8))  # warm-up
        outs = [draw(r) for r in range(repeats)]
        tokens = torch.cat([o.tokens for o in outs])  # (repeats * n, L)
        nll = None
        if judge is not None:
            nll = score_texts([model.decode(row) for row in tokens], judge)["judge_nll"]
        rows.append((name, statistics.median(o.nfe for o in outs), statistics.median(o.seconds for o in outs), nll,
                     unigram_entropy(tokens)))
    return rows


def compiled(model, n, length, steps, repeats, seed=0):
    """(eager s, compiled s, first compiled call s) of ancestral sampling, the two alternating; medians."""
    from ddlm.sampling import options as sampling_options

    opts = sampling_options(model.family, "ancestral", "random", steps, 1.0)
    fast = torch.compile(model.backbone, dynamic=True)  # committed-row subsets change the batch size

    def draw(backbone, r):
        g = torch.Generator().manual_seed(seed + r)
        return model.family.sample(backbone, model.process, n, length, **opts, generator=g).seconds

    draw(model.backbone, 0)
    first = draw(fast, 0)  # compiles
    eager, comp = [], []
    for r in range(repeats):
        eager.append(draw(model.backbone, r))
        comp.append(draw(fast, r))
    return statistics.median(eager), statistics.median(comp), first


BLOCK_LENGTHS = (256, 512, 1024, 2048)


def block_variants(refresh=0):
    """name -> generate() options: plain sliding windows, and with the prefix KV cache (refreshed every N calls)."""
    v = {"plain": {}, "kv": {"kv_cache": True}}
    if refresh:
        v[f"kv_refresh{refresh}"] = {"kv_cache": True, "kv_refresh": refresh}
    return v


def blocks(model, repeats, steps=64, seed=0, refresh=0):
    """Time per token of sliding-block generation beyond the context (one row, cached sampler, `steps` per
    window), each variant of block_variants; the variants alternate within a repeat, so that a busy machine
    slows them alike. {length: {variant: (median s/token, median NFE)}}."""
    variants = block_variants(refresh)

    def gen(length, r, **kw):
        return model.generate(n=1, length=length, steps=steps, sampler="cached", seed=seed + r, decode=False, **kw)

    for kw in variants.values():
        gen(BLOCK_LENGTHS[0], 0, **kw)  # warm-up
    out = {}
    for length in BLOCK_LENGTHS:
        runs = {name: [] for name in variants}
        for r in range(repeats):
            for name, kw in variants.items():
                runs[name].append(gen(length, r, **kw))
        out[length] = {name: (statistics.median(o.seconds for o in rs) / length, statistics.median(o.nfe for o in rs))
                       for name, rs in runs.items()}
    return out


def own_nll(model, tokens, passes=4, seed=0):
    """(NELBO nats, tokens) per row of samples (N, L) under the model itself, cut into context-sized chunks (a
    remainder is dropped), `passes` fresh t each (the same draws for every variant): an upper bound on its NLL."""
    ctx = model.cfg.model.max_len
    n_chunks = tokens.shape[1] // ctx
    chunks = tokens[:, : n_chunks * ctx].reshape(-1, ctx).to(model.device)  # (N * n_chunks, ctx), row-major
    g = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        total = sum(model.family.objective.bound(model.backbone, chunks, generator=g).double().cpu()
                    for _ in range(passes))  # (N * n_chunks,)
    per_row = total.view(tokens.shape[0], n_chunks).sum(-1) / passes
    return [(float(v), n_chunks * ctx) for v in per_row]


def blocks_quality(model, judge, length=512, n=8, steps=64, seed=0, refresh=0):
    """What the prefix cache's approximation costs. n samples of `length` tokens per variant, the same seed for
    all (so their first window, which has no prefix, is the same); scored are the tokens after the first
    window, under `judge` (NLL per judge token) or else the model's own NELBO. {variant: {nll, nll_se,
    entropy}} and, for every variant but plain, the paired per-sample difference to plain with its error."""
    from ddlm.eval.gen_ppl import unigram_entropy

    ctx = model.cfg.model.max_len
    per_sample = {}
    out = {}
    for name, kw in block_variants(refresh).items():
        o = model.generate(n=n, length=length, steps=steps, sampler="cached", seed=seed, **kw)
        if judge is not None:
            scored = judge.nll([model.decode(row[ctx:]) for row in o.tokens])
        else:
            scored = own_nll(model, o.tokens[:, ctx:])
        per_sample[name] = torch.tensor([a / b for a, b in scored], dtype=torch.float64)  # (n,) nats/token
        out[name] = {"nll": sum(a for a, _ in scored) / sum(b for _, b in scored),
                     "nll_se": float(per_sample[name].std() / n ** 0.5) if n > 1 else float("nan"),
                     "entropy": unigram_entropy(o.tokens[:, ctx:])}
    for name in out:
        if name != "plain":
            d = per_sample[name] - per_sample["plain"]
            out[name]["nll_minus_plain"] = float(d.mean())
            out[name]["nll_minus_plain_se"] = float(d.std() / n ** 0.5) if n > 1 else float("nan")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a trained model or run directory (default: random weights, quick shape)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--judge", help="quality of parallel decoding: an AR model directory or smollm2 (default: none)")
    p.add_argument("--no-parallel", action="store_true", help="skip the parallel-decoding table")
    p.add_argument("--parallel-only", action="store_true", help="only the parallel-decoding table")
    p.add_argument("--compile", action="store_true", help="also time ancestral 8 x 128 x 128 under torch.compile")
    p.add_argument("--parallel-batch", type=int, default=8, help="rows per parallel-decoding call (default 8; "
                   "the slowest row sets a batch's NFE, so 1 shows each row's own)")
    p.add_argument("--blocks", action="store_true", help="also time sliding-block generation at 256..2048 tokens, "
                   "plain and with the prefix KV cache, and compare their samples' quality at --blocks-quality-length")
    p.add_argument("--blocks-only", action="store_true", help="only the sliding-blocks tables (implies --blocks)")
    p.add_argument("--blocks-steps", type=int, default=64, help="--blocks: denoising steps per window (default 64)")
    p.add_argument("--blocks-refresh", type=int, default=0, help="--blocks: also the KV cache refreshed every N "
                   "network calls (default 0: not timed)")
    p.add_argument("--blocks-quality-length", type=int, default=512, help="--blocks: sample length of the quality "
                   "check (default 512; 0 skips it)")
    p.add_argument("--blocks-quality-n", type=int, default=16, help="--blocks: samples per variant (default 16)")
    add_arguments(p)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    check_arguments(p, args)
    if args.blocks_only:
        args.blocks = args.no_parallel = True
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.model)
    rows, result = [], {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    for n, length, steps in [] if args.parallel_only or args.blocks_only else SHAPES:
        nfe_a, t_a = run(model, n, length, steps, "ancestral", args.repeats)
        nfe_c, t_c = run(model, n, length, steps, "cached", args.repeats)
        rows.append((f"{n} x {length} x {steps}", nfe_a, t_a, nfe_c, t_c, t_a / t_c))
        result[f"cached_speedup_b{n}"] = t_a / t_c
        result[f"b{n}"] = {"ancestral_nfe": nfe_a, "ancestral_s": t_a, "cached_nfe": nfe_c, "cached_s": t_c}
    from ddlm.eval.gen_ppl import load_judge

    judge = load_judge(args.judge) if args.judge else None
    prows = []
    if not args.no_parallel:
        prows = parallel(model, judge, args.parallel_batch, min(128, model.cfg.model.max_len), args.repeats)
        result["parallel"] = [{"decoder": name, "nfe": nfe, "seconds": sec, "judge_nll": nll, "entropy": ent}
                              for name, nfe, sec, nll, ent in prows]
        result["judge"] = judge.name if judge else None
        result["parallel_batch"] = args.parallel_batch
    if args.compile:
        e, c, first = compiled(model, 8, min(128, model.cfg.model.max_len), 128, args.repeats)
        result["compile"] = {"eager_s": e, "compiled_s": c, "first_compiled_s": first, "speedup": e / c}
    if args.blocks:
        b = blocks(model, args.repeats, args.blocks_steps, refresh=args.blocks_refresh)
        result["blocks"] = {str(k): {**{f"{name}_s_per_token": sec for name, (sec, _) in v.items()},
                                     **{f"{name}_nfe": nfe for name, (_, nfe) in v.items()},
                                     "kv_speedup": v["plain"][0] / v["kv"][0]} for k, v in b.items()}
        result["blocks_steps"] = args.blocks_steps
        result["time_per_token_ratio_2048_over_256"] = b[2048]["kv"][0] / b[256]["kv"][0]  # with the KV cache
        result["time_per_token_ratio_2048_over_256_plain"] = b[2048]["plain"][0] / b[256]["plain"][0]
        if args.blocks_quality_length:
            q = blocks_quality(model, judge, args.blocks_quality_length, args.blocks_quality_n, args.blocks_steps,
                               refresh=args.blocks_refresh)
            result["blocks_quality"] = {"length": args.blocks_quality_length, "n": args.blocks_quality_n,
                                        "scored_from": model.cfg.model.max_len,
                                        "scorer": judge.name if judge else "the model's own NELBO (upper bound)",
                                        **q}
    if args.remask:
        result["remask"] = remask_table(model, args, judge)
    if args.json:
        print(json.dumps(result))
        return
    print(f"machine: {result['machine']}; model {model.backbone.n_params() / 1e6:.2f}M parameters"
          + ("" if args.remask_only and not args.blocks and not args.compile else f"; median of {args.repeats}"))
    if rows:
        print(f"{'batch x length x steps':24s} {'ancestral NFE':>14s} {'time s':>8s} {'cached NFE':>11s} "
              f"{'time s':>8s} {'speed-up':>9s}")
    for shape, nfe_a, t_a, nfe_c, t_c, sp in rows:
        print(f"{shape:24s} {nfe_a:14.0f} {t_a:8.2f} {nfe_c:11.0f} {t_c:8.2f} {sp:8.1f}x")
    if prows:
        print(f"\nparallel decoding, batch {args.parallel_batch} x {min(128, model.cfg.model.max_len)}, "
              f"{args.repeats} batches; quality judged by "
              f"{result['judge'] or 'nobody (pass --judge)'}")
        print(f"{'decoder':20s} {'NFE':>6s} {'time s':>8s} {'judge NLL':>10s} {'entropy':>8s}")
        for name, nfe, sec, nll, ent in prows:
            q = f"{nll:10.3f}" if nll is not None else f"{'-':>10s}"
            print(f"{name:20s} {nfe:6.0f} {sec:8.2f} {q} {ent:8.3f}")
    if "blocks" in result:
        names = list(block_variants(args.blocks_refresh))
        print(f"\nsliding blocks, 1 row (context {model.cfg.model.max_len}, stride half of it, cached sampler, "
              f"{args.blocks_steps} steps a window); kv = the finished prefix through the network once per window")
        print(f"{'tokens':>6s} " + " ".join(f"{n + ' ms/tok':>17s} {'NFE':>5s}" for n in names)
              + f" {'kv speed-up':>12s}")
        for k, v in result["blocks"].items():
            print(f"{k:>6s} " + " ".join(f"{1000 * v[n + '_s_per_token']:17.3f} {v[n + '_nfe']:5.0f}" for n in names)
                  + f" {v['kv_speedup']:11.2f}x")
        print(f"time_per_token_ratio_2048_over_256: kv {result['time_per_token_ratio_2048_over_256']:.2f}, "
              f"plain {result['time_per_token_ratio_2048_over_256_plain']:.2f}")
        if "blocks_quality" in result:
            q = result["blocks_quality"]
            print(f"quality of {q['n']} samples x {q['length']} tokens (same seed; tokens {q['scored_from']}.. "
                  f"scored, after the first window), NLL per token by {q['scorer']}:")
            for n in names:
                diff = ""
                if "nll_minus_plain" in q[n]:
                    diff = f"  paired - plain {q[n]['nll_minus_plain']:+.4f} +- {q[n]['nll_minus_plain_se']:.4f}"
                print(f"  {n:16s} NLL {q[n]['nll']:.4f} +- {q[n]['nll_se']:.4f}{diff}  "
                      f"unigram entropy {q[n]['entropy']:.4f} nats")
    if "remask" in result:
        print_remask(result["remask"])
    if "compile" in result:
        c = result["compile"]
        print(f"\ntorch.compile, ancestral 8 x {min(128, model.cfg.model.max_len)} x 128: eager {c['eager_s']:.2f} s, "
              f"compiled {c['compiled_s']:.2f} s ({c['speedup']:.2f}x; first compiled call {c['first_compiled_s']:.0f} s)")


if __name__ == "__main__":
    from ddlm.errors import UserError

    try:
        main()
    except UserError as e:  # what the user asked for cannot be done: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
