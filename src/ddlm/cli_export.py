"""`ddlm export RUN_DIR --out DIR [--step N] [--base MODEL]`: the model of one checkpoint of a run, as a
save_pretrained folder that `ddlm sample` and `ddlm eval` load.

A run's `model/` is its newest weights; an older checkpoint is what a run that went wrong late (a GRPO run that
broke, a training run that over-fitted) keeps of its better days. Both kinds of run are read:

    ddlm train run       checkpoints hold "model" and "ema": the EMA weights are exported when there are any, as
                         the trainer itself exports them; config and tokenizer from RUN_DIR/model
    ddlm finetune grpo   checkpoints hold "backbone" (the fine-tuned weights); config and tokenizer from
                         RUN_DIR/model (written at the run's end or on Ctrl-C), else from the base model named
                         in the checkpoint, else from --base
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import UserError


def checkpoint_state(run: Path, step: int | None) -> dict:
    """The state of checkpoint `step` of `run` (None: the newest that verifies), read on the CPU."""
    from .train.checkpoint import list_checkpoints, load_latest, read_checkpoint, step_of, verify

    found = list_checkpoints(run) if run.is_dir() else []
    if not found:
        raise UserError(f"{run} holds no checkpoints (checkpoints/step-*.pt); give a run folder of `ddlm train` or "
                        "`ddlm finetune --method grpo`")
    if step is None:
        state = load_latest(run, log=lambda line: print(line, file=sys.stderr))
        if state is None:
            raise UserError(f"no checkpoint of {run} verifies (every one is damaged or incomplete)")
        return state
    steps = sorted(step_of(p) for p in found)
    path = next((p for p in found if step_of(p) == step), None)
    if path is None:
        raise UserError(f"{run} has no checkpoint of step {step}; it keeps steps {', '.join(map(str, steps))}")
    data = verify(path)
    if data is None:
        raise UserError(f"checkpoint {path} is damaged or incomplete; choose another --step "
                        f"({', '.join(map(str, steps))})")
    return read_checkpoint(path, data)


def cmd_export(args) -> int:
    from .pipeline import SequenceModel

    run, out = Path(args.run), Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; choose a new folder")
    state = checkpoint_state(run, args.step)
    if "backbone" in state:  # a GRPO run
        weights = state["backbone"]
        template = args.base or (run / "model" if (run / "model" / "config.json").is_file() else state.get("base"))
        if template is None:
            raise UserError(f"{run} has no model/ yet and its checkpoints do not name their base model; give the "
                            "model it fine-tuned with --base DIR")
    elif "model" in state:  # a ddlm train run
        weights = state["ema"] if state.get("ema") is not None else state["model"]
        template = args.base or run
    else:
        raise UserError(f"the checkpoints of {run} are neither `ddlm train`'s nor GRPO's")
    model = SequenceModel.from_pretrained(template)
    try:
        model.backbone.load_state_dict(weights)
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"the checkpoint's weights do not fit the model of {template} ({first}); give the run's "
                        "own model with --base") from None
    model.backbone.eval()
    model.save_pretrained(out)
    print(f"exported step {state['step']} of {run} into {out}")
    return 0


def register(sub) -> None:
    from .cli_common import _positive_int

    e = sub.add_parser("export", help="the model of one checkpoint of a run (train or grpo), for sample and eval",
                       description="Write the weights of one checkpoint of a `ddlm train` or `ddlm finetune --method "
                                   "grpo` run as a model folder (config.json, model.safetensors, tokenizer.json).")
    e.add_argument("run", metavar="RUN_DIR", help="a run folder holding checkpoints/")
    e.add_argument("--out", required=True, help="the model folder to write (new or empty)")
    e.add_argument("--step", type=_positive_int, metavar="N", help="the checkpoint's step (default: the newest "
                   "that verifies; a wrong step lists those kept)")
    e.add_argument("--base", metavar="DIR", help="the model whose config and tokenizer the weights belong to "
                   "(default: RUN_DIR's model/, or a GRPO run's base model)")
    e.set_defaults(func=cmd_export)
