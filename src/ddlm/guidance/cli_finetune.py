"""`ddlm finetune DIR --reward NAME --out OUT`: DRAKES reward fine-tuning of a masked-diffusion model.

Trains a differentiable surrogate of the reward on the model's training records (guidance/surrogate.py), or loads
one (--surrogate PATH), runs drakes.finetune and writes OUT: a run folder (marker .ddlm-run) holding model/ (what
`ddlm sample OUT` and `ddlm eval OUT` load), surrogate/ (reusable with --surrogate OUT) and drakes.json (the
settings, the surrogate's held-out fit and the reward and KL of every iteration). OUT follows `ddlm train`'s
overwrite rules: a new or empty folder, or an earlier ddlm run with --overwrite; never the model's own folder.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..errors import UserError


def cmd_finetune(args) -> int:
    import torch

    from ..cli_common import _threads
    from ..pipeline import SequenceModel
    from ..train.rundir import check_run_dir, clear_run_dir, write_marker
    from . import drakes, surrogate
    from .rewards import resolve_reward

    start = time.perf_counter()
    out, src = Path(args.out), Path(args.model)
    if src.exists() and out.exists() and out.resolve() in (src.resolve(), (src / "model").resolve()):
        raise UserError(f"--out {out} is the model being fine-tuned; write the fine-tuned model to a new folder")
    if src.exists() and out.resolve() in src.resolve().parents:
        raise UserError(f"--out {out} holds the model being fine-tuned; write the fine-tuned model to a new folder")
    clear = check_run_dir(out, overwrite=args.overwrite)  # before anything slow
    _threads(args.threads, 1)
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    model = SequenceModel.from_pretrained(src)
    process = model.process
    if getattr(process, "mask_id", None) is None or model.family.causal or not hasattr(process, "schedule"):
        raise UserError(f"DRAKES fine-tunes a masked-diffusion model (mdlm); {src} is a {model.family.name} model")
    if args.surrogate:
        net, info = surrogate.load(args.surrogate, model)
        if args.reward is not None and args.reward != info["reward"]:
            raise UserError(f"the surrogate in {args.surrogate} learned the reward {info['reward']!r}, not "
                            f"{args.reward!r}; leave out --reward or --surrogate")
        say(f"surrogate of {info['reward']} from {args.surrogate} (held-out MAE {info['fit']['mae']}, Pearson r "
            f"{info['fit']['pearson']})")
    else:
        if args.reward is None:
            raise UserError("give the reward to fine-tune towards (--reward qed) or a trained surrogate "
                            "(--surrogate PATH)")
        resolve_reward(args.reward)  # an unknown name or a missing RDKit: one line before the records load
        net, info = surrogate.train_surrogate(model, args.reward, n=args.surrogate_records,
                                              epochs=args.surrogate_epochs, seed=args.seed, log=say)
        f = info["fit"]
        say(f"surrogate: held-out MAE {f['mae']} (predicting the mean: {f['mae_of_mean']}), Pearson r {f['pearson']}"
            f" on {f['n_test']:,} rows, {f['seconds']} s")
    net = net.to(model.device)
    steps = args.steps or model.cfg.sample.steps
    every = max(1, args.max_steps // 20)
    count = [0]

    def log(line):
        count[0] += 1
        if count[0] % every == 0 or count[0] in (1, args.max_steps):
            say(line)

    say(f"drakes: {args.max_steps} steps of {args.batch_size} trajectories ({steps} denoising steps, gradients "
        f"through the last {args.grad_steps or steps}), beta {args.beta}, lr {args.lr}")
    history = drakes.finetune(model, net, iterations=args.max_steps, n=args.batch_size, steps=steps, lr=args.lr,
                              beta=args.beta, tau=args.tau, grad_steps=args.grad_steps, seed=args.seed, log=log)
    if clear:
        clear_run_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out)
    model.backbone.eval()
    with torch.no_grad():
        model.save_pretrained(out / "model")
    surrogate.save(out / "surrogate", net.cpu(), {k: v for k, v in info.items() if k not in ("arch", "ddlm_surrogate")})
    report = {"base": str(src), "reward": info["reward"], "surrogate_fit": info["fit"],
              "settings": {"max_steps": args.max_steps, "batch_size": args.batch_size, "steps": steps,
                           "grad_steps": args.grad_steps, "beta": args.beta, "lr": args.lr, "tau": args.tau,
                           "seed": args.seed},
              "history": history, "seconds": round(time.perf_counter() - start, 1)}
    (out / "drakes.json").write_text(json.dumps(report, indent=1))
    first, last = history[0], history[-1]
    print(f"fine-tuned {src} into {out} in {report['seconds']} s: surrogate reward {first['reward']:.4f} -> "
          f"{last['reward']:.4f}, KL to the base {last['kl']:.4f} nats per sample")
    return 0


def register(sub) -> None:
    """Add `ddlm finetune` to the subcommands `sub`."""
    from ..cli_common import _add_threads, _float, _positive_int, _seed
    from .rewards import reward_names

    f = sub.add_parser("finetune", help="DRAKES: fine-tune a masked-diffusion model towards a reward")
    f.add_argument("model", metavar="DIR", help="a trained mdlm run or model directory (read only)")
    f.add_argument("--out", required=True, help="the fine-tuned run folder to write (new or empty, or an earlier "
                   "ddlm run with --overwrite)")
    f.add_argument("--reward", metavar="NAME", help=f"the reward the surrogate learns: {', '.join(reward_names())} "
                   "(molecules, RDKit) or module:function (a list of texts -> numbers)")
    f.add_argument("--surrogate", metavar="PATH", help="a trained surrogate (a folder `ddlm finetune` wrote, or "
                   "its surrogate/) instead of training one")
    f.add_argument("--max-steps", type=_positive_int, default=100, help="optimiser (Adam) steps (default 100)")
    f.add_argument("--batch-size", type=_positive_int, default=16, help="sampled trajectories per step (default 16)")
    f.add_argument("--steps", type=_positive_int, help="denoising steps of each trajectory (default: the model's "
                   "sample.steps)")
    f.add_argument("--grad-steps", type=_positive_int, help="back-propagate through the last K denoising steps only "
                   "(default: all)")
    f.add_argument("--beta", type=_float, default=0.1, help="weight of KL(fine-tuned || base) (default 0.1)")
    f.add_argument("--lr", type=_float, default=1e-4, help="Adam learning rate (default 1e-4)")
    f.add_argument("--tau", type=_float, default=1.0, help="Gumbel-softmax temperature (default 1)")
    f.add_argument("--surrogate-records", type=_positive_int, default=20_000, help="training records the surrogate "
                   "is fitted on (default 20,000; 10%% held out)")
    f.add_argument("--surrogate-epochs", type=_positive_int, default=10, help="surrogate epochs (default 10)")
    f.add_argument("--seed", type=_seed, default=0, help="seed of the records, the surrogate and the trajectories")
    f.add_argument("--overwrite", action="store_true", help="replace an earlier ddlm run in --out")
    f.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_threads(f, 1)
    f.set_defaults(func=cmd_finetune)
