"""`ddlm finetune DIR --reward NAME --out OUT [--method drakes|grpo]`: reward fine-tuning of a masked-diffusion model.

drakes (the default): trains a differentiable surrogate of the reward on the model's training records
(guidance/surrogate.py), or loads one (--surrogate PATH), and runs drakes.finetune; OUT gets surrogate/ (reusable
with --surrogate OUT) and drakes.json (the settings, the surrogate's held-out fit, the reward and KL of every
iteration). grpo: policy gradient with the exact reward on the model's own samples (guidance/grpo.py), no
surrogate; OUT gets grpo.json (the settings and every iteration's reward, KL and uniqueness).
Both write model/ in OUT (what `ddlm sample OUT` and `ddlm eval OUT` load), a run folder (marker .ddlm-run)
that follows `ddlm train`'s overwrite rules: a new or empty folder, or an earlier ddlm run with --overwrite;
never the model's own folder.

grpo also writes resumable checkpoints into OUT/checkpoints (train/checkpoint.py: atomic, checksummed; every
--ckpt-every steps, at the end and on Ctrl-C). `--resume` continues the run in OUT exactly where its last good
checkpoint ends, on the same base model (checked by a fingerprint of its weights) with the same settings; only
--max-steps may differ, so a finished run can be extended. --sampler / --planner / --planner-option decode each
group as the tuned model will be sampled (e.g. in the top-margin order); recorded in the settings. --device
(default auto: the GPU when torch sees one) is where the model runs; a resumed run continues on the kind of device
it was made on (a CUDA generator's state does not continue on the CPU).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..errors import UserError


def cmd_finetune(args) -> int:
    import torch

    from ..cli_common import _device, _threads
    from ..pipeline import SequenceModel
    from ..train.guard import EXIT_INTERRUPTED, SignalGuard
    from ..train.checkpoint import list_checkpoints
    from ..train.rundir import check_run_dir, clear_run_dir, write_marker
    from .value import require_masked_diffusion

    start = time.perf_counter()
    out, src = Path(args.out), Path(args.model)
    if src.exists() and out.exists() and out.resolve() in (src.resolve(), (src / "model").resolve()):
        raise UserError(f"--out {out} is the model being fine-tuned; write the fine-tuned model to a new folder")
    if src.exists() and out.resolve() in src.resolve().parents:
        raise UserError(f"--out {out} holds the model being fine-tuned; write the fine-tuned model to a new folder")
    _refuse_the_other_methods_flags(args)  # before anything slow
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    if args.resume:
        if args.overwrite:
            raise UserError("--resume continues the run in --out and --overwrite would replace it; give one of them")
        resume = _resume_state(out, say)  # before anything slow
        clear = False
    else:
        resume = None
        if args.method == "grpo" and not args.overwrite and list_checkpoints(out):
            raise UserError(f"{out} holds a GRPO run with checkpoints; add --resume to continue it, --overwrite to "
                            "start again, or choose another --out")
        clear = check_run_dir(out, overwrite=args.overwrite, resumable=False)
    _threads(args.threads, 1)
    model = SequenceModel.from_pretrained(src, map_location=_device(args))
    require_masked_diffusion(model, args.method, str(src))  # before a surrogate trains for minutes
    steps = args.steps or model.cfg.sample.steps
    every = max(1, args.max_steps // 20)
    count = [len(resume["history"]) if resume else 0]  # progress lines at the same steps as an unbroken run
    prepared = False

    def prepare():
        """Make OUT the run's folder, once: before the first checkpoint, or at the end (nothing is written for a
        command refused on the way)."""
        nonlocal prepared
        if not prepared:
            if clear:
                clear_run_dir(out)
            out.mkdir(parents=True, exist_ok=True)
            if resume is None:
                write_marker(out)
            prepared = True

    def log(line):
        count[0] += 1
        if count[0] % every == 0 or count[0] in (1, args.max_steps):
            say(line)

    run = _grpo if args.method == "grpo" else _drakes
    guard = SignalGuard(f"ddlm finetune: stopped at once (second signal); the model was not written to {out}"
                        + (" (--resume continues from its last checkpoint)" if args.method == "grpo" else ""))
    with guard:  # the first Ctrl-C ends the run after the current step and keeps what it has learned
        history, name, report, write_extra = run(args, model, steps, say, log, lambda: bool(guard.flag), resume,
                                                 prepare)
    prepare()
    model.backbone.eval()
    with torch.no_grad():
        model.save_pretrained(out / "model")
    write_extra(out)
    report = {"base": str(src), "method": args.method, **report, "history": history,
              "interrupted": bool(guard.flag), "seconds": round(time.perf_counter() - start, 1)}
    if resume is not None:
        report["resumed_at"] = len(resume["history"])  # `seconds` is this invocation's
    (out / f"{args.method}.json").write_text(json.dumps(report, indent=1))
    if guard.flag:
        print(f"ddlm finetune: interrupted after {len(history)} of {args.max_steps} steps; the model fine-tuned so "
              f"far is in {out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    first, last = history[0], history[-1]
    what = "surrogate reward" if args.method == "drakes" else f"mean {name} of the samples"
    print(f"fine-tuned {src} into {out} in {report['seconds']} s ({args.method}): {what} {first['reward']:.4f} -> "
          f"{last['reward']:.4f}, KL to the base {last['kl']:.4f} "
          f"{'nats per sample' if args.method == 'drakes' else 'nats per masked token'}")
    return 0


def _refuse_the_other_methods_flags(args) -> None:
    """One line for a flag of the other --method (a grpo flag given to drakes, or a drakes flag to grpo)."""
    if args.method == "grpo":
        owner, other = "drakes", (("--grad-steps", args.grad_steps), ("--tau", args.tau))
    else:
        owner, other = "grpo", (("--masks", args.masks), ("--inner", args.inner), ("--coupled", args.coupled or None),
                                ("--floor", args.floor), ("--resume", args.resume or None),
                                ("--ckpt-every", args.ckpt_every), ("--sampler", args.sampler),
                                ("--planner", args.planner), ("--planner-option", args.planner_option or None))
    for flag, value in other:
        if value is not None:
            raise UserError(f"{flag} belongs to --method {owner}; leave it out for {args.method}")
    if (args.planner is not None or args.planner_option) and args.sampler != "planned":
        flag = "--planner" if args.planner is not None else "--planner-option"
        raise UserError(f"{flag} sets the decoding order of --sampler planned; add --sampler planned")
    if args.planner is not None:
        from ..sampling.planners import get_planner

        get_planner(args.planner)  # an unknown name lists the valid ones, before the model loads


def _resume_state(out: Path, say) -> dict:
    """The newest good checkpoint of the GRPO run in `out` (UserError when there is none)."""
    from ..train.checkpoint import load_latest

    state = load_latest(out, log=say) if out.is_dir() else None
    if state is None or "grpo" not in state:
        raise UserError(f"--resume: {out} holds no GRPO checkpoint to continue (checkpoints/step-*.pt); run without "
                        "--resume to start a new run")
    return state


def _fingerprint(backbone) -> str:
    """SHA-256 of a backbone's weights, in state-dict order: the base a GRPO run resumes on must be its own."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, v in backbone.state_dict().items():
        h.update(name.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    return h.hexdigest()


def _drakes(args, model, steps, say, log, stop, resume, prepare):
    from . import drakes, surrogate
    from .rewards import resolve_reward

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
    batch = args.batch_size or 16
    beta = 0.1 if args.beta is None else args.beta
    tau = 1.0 if args.tau is None else args.tau
    lr = 1e-4 if args.lr is None else args.lr
    say(f"drakes: {args.max_steps} steps of {batch} trajectories ({steps} denoising steps, gradients "
        f"through the last {args.grad_steps or steps}), beta {beta}, lr {lr}")
    history = drakes.finetune(model, net, iterations=args.max_steps, n=batch, steps=steps, lr=lr,
                              beta=beta, tau=tau, grad_steps=args.grad_steps, seed=args.seed, log=log,
                              stop=stop)
    report = {"reward": info["reward"], "surrogate_fit": info["fit"],
              "settings": {"max_steps": args.max_steps, "batch_size": batch, "steps": steps,
                           "grad_steps": args.grad_steps, "beta": beta, "lr": lr, "tau": tau,
                           "seed": args.seed}}

    def write_extra(out):
        surrogate.save(out / "surrogate", net.cpu(),
                       {k: v for k, v in info.items() if k not in ("arch", "ddlm_surrogate")})

    return history, info["reward"], report, write_extra


def _grpo(args, model, steps, say, log, stop, resume, prepare):
    from ..train.checkpoint import save_checkpoint
    from . import grpo
    from .rewards import resolve_reward
    from .steer import texts_of
    from .value import checked_reward

    if args.surrogate:
        raise UserError("--method grpo scores the model's samples with the reward itself; leave out --surrogate "
                        "(a DRAKES surrogate)")
    if args.reward is None:
        raise UserError("give the reward to fine-tune towards: --reward qed (or module:function)")
    fn, name = resolve_reward(args.reward)
    reward = checked_reward(lambda tokens: fn(texts_of(model, tokens)), name)
    group = args.batch_size or 32
    beta = 0.05 if args.beta is None else args.beta
    masks = args.masks or 4
    lr = 2e-4 if args.lr is None else args.lr
    inner = args.inner or 4
    if args.coupled and masks % 2:
        raise UserError(f"--coupled pairs each mask with its complement: --masks must be even, got {masks}")
    sample_options = _rollout_options(args, model)
    settings = {"max_steps": args.max_steps, "group": group, "steps": steps, "beta": beta, "lr": lr, "masks": masks,
                "coupled": args.coupled, "inner": inner, "floor": args.floor, "seed": args.seed,
                **{k: sample_options.get(k) for k in ROLLOUT_KEYS}}  # None: the model's own (runs before them)
    # what the continued steps depend on: all of it but max_steps must be the checkpoint's
    # and the kind of device: a CUDA generator's state is not a CPU one's, and the sums differ in their last bits
    defines = {"reward": name, "base_weights": _fingerprint(model.backbone),
               **{k: v for k, v in settings.items() if k != "max_steps"}, "device": model.device.type}
    if resume is not None:
        saved = {"device": "cpu", **resume["grpo"]}  # runs before --device were all on the CPU
        if saved["device"] != defines["device"]:
            raise UserError(f"--resume: the run in {args.out} was made on the {saved['device']} and continues "
                            f"exactly only there; add --device {saved['device']}")
        differ = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in defines.items() if saved.get(k) != v]
        if differ:
            what = ("the base model's weights differ" if differ[0].startswith("base_weights")
                    else f"{differ[0]}{f' and {len(differ) - 1} more' if len(differ) > 1 else ''}")
            raise UserError(f"--resume: the run in {args.out} was made with other settings ({what}); resume with "
                            "the same DIR and options (only --max-steps may change)")
        done = len(resume["history"])
        if args.max_steps <= done:
            raise UserError(f"--resume: the run in {args.out} has done {done} steps; give --max-steps above {done} "
                            "to continue it")
        say(f"grpo: resuming {args.out} at step {done}")
    parts = [f"{k} {v}" for k, v in sample_options.items() if k != "planner_options"]
    parts += [f"{o}={x}" for o, x in sample_options.get("planner_options", {}).items()]
    order = f" ({', '.join(parts)})" if parts else ""
    say(f"grpo: {args.max_steps} steps, each on {group} records sampled with {steps} denoising steps{order} and "
        f"scored by {name}; {inner} Adam steps per group, beta {beta}, lr {lr}, {masks} "
        f"{'coupled ' if args.coupled else ''}masks per record"
        + (f", worse records' tokens floored {args.floor} nats below the base" if args.floor is not None else ""))
    ckpt_every = max(1, args.max_steps // 10) if args.ckpt_every is None else args.ckpt_every
    history = grpo.finetune(model, reward, iterations=args.max_steps, group=group, steps=steps, lr=lr,
                            beta=beta, masks=masks, inner=inner, seed=args.seed, coupled=args.coupled,
                            floor=args.floor, log=log, warn=lambda line: say(
                                f"warning: {line}; the newest checkpoint of those steps is kept (`ddlm export "
                                f"{args.out} --step N --out DIR` writes its model)"),
                            stop=stop, resume=resume, checkpoint_every=ckpt_every, sample_options=sample_options,
                            checkpoint=lambda state: (prepare(), save_checkpoint(
                                args.out, {**state, "grpo": defines, "base": str(Path(args.model).resolve())},
                                resume_command="ddlm finetune ... --resume", protect=_before_the_break(args.out,
                                                                                                  state))))
    report = {"reward": name, "settings": {**settings, "ckpt_every": ckpt_every}}
    return history, name, report, lambda out: None


def _before_the_break(out, state) -> tuple[int, ...]:
    """The step of the newest checkpoint in `out` from before the run's first break sign (grpo.break_signs), kept
    when later checkpoints would rotate it out; () when the run shows no sign or has no such checkpoint."""
    from ..train.checkpoint import list_checkpoints, step_of
    from .grpo import last_good_step

    limit = last_good_step(state["history"])
    if limit is None:
        return ()
    good = [step_of(p) for p in list_checkpoints(out) if step_of(p) <= limit]
    return tuple(good[:1])


ROLLOUT_SAMPLERS = ("ancestral", "cached", "planned")  # samplers whose written tokens stay written, as GRPO scores
ROLLOUT_KEYS = ("sampler", "planner", "planner_options")  # how GRPO decodes its groups, in its settings


def _rollout_options(args, model) -> dict:
    """model.generate options for GRPO's groups from --sampler, --planner and --planner-option ({}: the model's
    own sampler; the flags were checked by _refuse_the_other_methods_flags)."""
    from ..cli_common import planner_options_from

    if args.sampler is None:
        return {}
    out = {"sampler": args.sampler}
    if args.sampler == "planned":
        out["planner"] = args.planner or model.cfg.sample.planner
        options = planner_options_from(args, model.cfg)  # an unknown key: one line
        if options:
            out["planner_options"] = options
    return out


def register(sub) -> None:
    """Add `ddlm finetune` to the subcommands `sub`."""
    from ..cli_common import _add_device, _add_threads, _float, _nonneg_int, _positive_int, _seed, add_planner_options
    from .rewards import reward_names

    f = sub.add_parser("finetune", help="reward fine-tuning of a masked-diffusion model (DRAKES or GRPO)")
    f.add_argument("model", metavar="DIR", help="a trained mdlm run or model directory (read only)")
    f.add_argument("--out", required=True, help="the fine-tuned run folder to write (new or empty, or an earlier "
                   "ddlm run with --overwrite)")
    f.add_argument("--method", choices=("drakes", "grpo"), default="drakes",
                   help="drakes: back-propagate a learned surrogate of the reward through Gumbel-softmax "
                   "trajectories (Wang et al. 2025); grpo: policy gradient with the exact reward of the model's own "
                   "samples and the ELBO as their log-likelihood (d1's diffu-GRPO) (default drakes)")
    f.add_argument("--reward", metavar="NAME", help=f"the reward: {', '.join(reward_names())} (molecules, RDKit) or "
                   "module:function (a list of texts -> numbers); drakes fits a surrogate to it")
    f.add_argument("--surrogate", metavar="PATH", help="drakes: a trained surrogate (a folder `ddlm finetune` "
                   "wrote, or its surrogate/) instead of training one")
    f.add_argument("--max-steps", type=_positive_int, default=100, help="steps, each on a fresh sample (default "
                   "100): one Adam step each for drakes, --inner for grpo")
    f.add_argument("--batch-size", type=_positive_int, help="sampled trajectories (drakes, default 16) or the "
                   "group of records compared (grpo, default 32) per step")
    f.add_argument("--steps", type=_positive_int, help="denoising steps of each trajectory (default: the model's "
                   "sample.steps)")
    f.add_argument("--grad-steps", type=_positive_int, help="drakes: back-propagate through the last K denoising "
                   "steps only (default: all)")
    f.add_argument("--beta", type=_float, help="weight of KL(fine-tuned || base) (default 0.1 drakes, 0.05 grpo: "
                   "per sample for drakes, per masked token for grpo)")
    f.add_argument("--lr", type=_float, help="Adam learning rate (default 1e-4 drakes, 2e-4 grpo)")
    f.add_argument("--tau", type=_float, help="drakes: Gumbel-softmax temperature (default 1)")
    f.add_argument("--masks", type=_positive_int, help="grpo: masked copies of each record in its ELBO (default 4)")
    f.add_argument("--inner", type=_positive_int, help="grpo: Adam steps on each sampled group, with PPO's clipped "
                   "ratio after the first (default 4)")
    f.add_argument("--coupled", action="store_true", help="grpo: draw the masks in pairs, a mask and its "
                   "complement, so each pair scores every token once (lower-variance ELBO; --masks even)")
    f.add_argument("--floor", type=_float, metavar="NATS", help="grpo: push a token of a record with a negative "
                   "advantage down only while its log-probability is within NATS of the base model's (default: no "
                   "floor; see README, GRPO)")
    f.add_argument("--sampler", choices=ROLLOUT_SAMPLERS, help="grpo: how each group is decoded (default: the "
                   "model's sampler); planned with --planner to reward the records of the order the tuned model "
                   "will be sampled in")
    f.add_argument("--planner", metavar="NAME", help="grpo with --sampler planned: the decoding order (default: the "
                   "model's sample.planner)")
    add_planner_options(f, "grpo with --sampler planned: ")
    f.add_argument("--surrogate-records", type=_positive_int, default=20_000, help="drakes: training records the "
                   "surrogate is fitted on (default 20,000; 10%% held out)")
    f.add_argument("--surrogate-epochs", type=_positive_int, default=10, help="drakes: surrogate epochs (default 10)")
    f.add_argument("--seed", type=_seed, default=0, help="seed of the records, the surrogate and the samples")
    f.add_argument("--ckpt-every", type=_nonneg_int, metavar="N", help="grpo: write a resumable checkpoint into "
                   "OUT/checkpoints every N steps (default: a tenth of --max-steps; 0: only at the end and on "
                   "Ctrl-C)")
    f.add_argument("--resume", action="store_true", help="grpo: continue the run in --out from its last good "
                   "checkpoint, on the same DIR with the same options; a larger --max-steps extends a finished run")
    f.add_argument("--overwrite", action="store_true", help="replace an earlier ddlm run in --out")
    f.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_threads(f, 1)
    _add_device(f)
    f.set_defaults(func=cmd_finetune)
