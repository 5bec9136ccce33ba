"""Training throughput: an MDLM step against an AR step on the same backbone and shape, and the machine's matmul peak.

    python benchmarks/train_throughput.py [--shapes 32x128,32x81] [--repeats 5] [--threads 1] [--compile] [--json]

One training step is what the Trainer does: zero_grad, loss = objective(backbone, batch), backward, gradient
clipping, AdamW step (EMA is left out: it is the same for both objectives). Achieved GFLOP/s counts the matmul
FLOPs analytically: 6 * (matmul weights) * tokens for forward + backward, plus attention's two L x L products,
12 * B * L^2 * d per layer (causal attention is counted in full too: SDPA computes the whole square on CPU).
`fraction_of_matmul_peak` divides it by a plain 2048^2 fp32 matmul measured in the same process, same threads.
MDLM and AR steps alternate within each repeat so that a busy machine slows both alike; medians after a warm-up.
With --compile, steps with the backbone under torch.compile join the alternation (the first, compiling, step apart).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import ddlm  # noqa: E402
from ddlm.data.tokenizers import CharTokenizer  # noqa: E402
from ddlm.train.optim import make_optimizer  # noqa: E402


class Matmul:
    """A plain n x n fp32 matmul; each call returns its GFLOP/s."""

    def __init__(self, n: int = 2048):
        self.n, self.a, self.b = n, torch.randn(n, n), torch.randn(n, n)
        self()  # warm-up

    def __call__(self) -> float:
        t0 = time.perf_counter()
        self.a @ self.b
        return 2 * self.n ** 3 / (time.perf_counter() - t0) / 1e9


def step_flops(backbone, batch: int, length: int) -> float:
    """Matmul FLOPs of one forward + backward: 6 * weights * tokens + 12 * B * L^2 * d per layer."""
    weights = sum(m.weight.numel() for m in backbone.modules() if isinstance(m, torch.nn.Linear))
    d, layers = backbone.cfg.d_model, backbone.cfg.n_layers
    return 6 * weights * batch * length + 12 * batch * length ** 2 * d * layers


class Step:
    """One training step of a family's objective on a backbone, with its own optimiser."""

    def __init__(self, cfg, tokenizer, compile_: bool = False):
        torch.manual_seed(0)
        self.model = ddlm.SequenceModel(cfg, tokenizer)
        self.backbone = self.model.backbone.train()
        self.module = torch.compile(self.backbone) if compile_ else self.backbone
        self.objective = self.model.family.objective
        self.optimizer = make_optimizer(self.backbone, cfg.train)
        self.noise = torch.Generator().manual_seed(1)
        self.vocab = tokenizer.vocab_size

    def __call__(self, x0: torch.Tensor) -> float:
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.objective(self.module, x0, self.noise)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.backbone.parameters(), 1.0)
        self.optimizer.step()
        return time.perf_counter() - t0


def measure(cfg, tokenizer, batch, length, repeats, warmup, matmul, compile_=False) -> dict:
    cfg = ddlm.apply_overrides(cfg, [f"model.max_len={length}"])
    variants = [(name, name, False) for name in ("mdlm", "ar")]
    if compile_:
        variants += [(name + "+compile", name, True) for name in ("mdlm", "ar")]
    steps = {key: Step(ddlm.apply_overrides(cfg, [f"process.name={name}"]), tokenizer, c)
             for key, name, c in variants}
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, tokenizer.vocab_size, (batch, length), generator=g)
    first = {}
    for name, step in steps.items():  # warm-up (with --compile the first call compiles)
        first[name] = step(x0)
        for _ in range(warmup - 1):
            step(x0)
    times, peaks = {name: [] for name in steps}, []
    for _ in range(repeats):
        for name, step in steps.items():  # alternate, so that the machine's load hits all alike
            times[name].append(step(x0))
        peaks.append(matmul())  # the peak is measured between the steps, under the same load
    flops = step_flops(steps["mdlm"].backbone, batch, length)
    out = {"batch": batch, "length": length, "params": steps["mdlm"].backbone.n_params(), "step_gflop": flops / 1e9,
           "matmul_2048_gflops": statistics.median(peaks)}
    for name in steps:
        s = statistics.median(times[name])
        out[name] = {"step_s": s, "tokens_per_s": batch * length / s, "gflops": flops / s / 1e9,
                     "first_step_s": first[name]}
    out["mdlm_over_ar"] = out["mdlm"]["tokens_per_s"] / out["ar"]["tokens_per_s"]
    if compile_:
        out["compile_speedup_mdlm"] = out["mdlm"]["step_s"] / out["mdlm+compile"]["step_s"]
        out["compile_speedup_ar"] = out["ar"]["step_s"] / out["ar+compile"]["step_s"]
    out["fraction_of_matmul_peak"] = out["mdlm"]["gflops"] / out["matmul_2048_gflops"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="32x128,32x81", help="batch x length pairs, comma-separated")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--compile", action="store_true", help="also measure the steps under torch.compile")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = CharTokenizer.from_text("".join(chr(c) for c in range(32, 127)) + "\n")
    cfg = ddlm.apply_overrides(ddlm.load_preset("small"), [
        f"model.n_layers={args.layers}", f"model.d_model={args.width}", "model.dropout=0.0"])
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    matmul = Matmul()
    result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "model": f"{args.layers} layers x {args.width}", "shapes": []}
    for b, l in shapes:
        result["shapes"].append(measure(cfg, tok, b, l, args.repeats, args.warmup, matmul, args.compile))
    first = result["shapes"][0]  # the headline fields name the first shape
    for k in ("mdlm_over_ar", "fraction_of_matmul_peak", "matmul_2048_gflops"):
        result[k] = first[k]
    if args.json:
        print(json.dumps(result))
        return
    print(f"machine: {result['machine']}; {result['model']}; median of {args.repeats} after {args.warmup} warm-up; "
          f"the 2048^2 matmul peak is measured between the steps")
    print(f"{'shape':10s} {'objective':12s} {'step s':>8s} {'tokens/s':>9s} {'GFLOP/s':>8s} {'of peak':>8s}")
    for r in result["shapes"]:
        peak = r["matmul_2048_gflops"]
        for name in ("mdlm", "ar", "mdlm+compile", "ar+compile"):
            if name in r:
                m = r[name]
                print(f"{r['batch']}x{r['length']:<7d} {name:12s} {m['step_s']:8.3f} {m['tokens_per_s']:9.0f} "
                      f"{m['gflops']:8.1f} {m['gflops'] / peak:8.2f}")
        line = f"{'':10s} mdlm_over_ar {r['mdlm_over_ar']:.3f}; matmul peak {peak:.0f} GFLOP/s"
        if "mdlm+compile" in r:
            line += (f"; torch.compile speed-up mdlm {r['compile_speedup_mdlm']:.2f}x, ar {r['compile_speedup_ar']:.2f}x"
                     f" (first compiled step {r['mdlm+compile']['first_step_s']:.0f} s)")
        print(line)


if __name__ == "__main__":
    main()
