"""`ddlm sample` options for steering: --cond, --guidance, --reward, --svdd, --smc and their temperatures."""

from __future__ import annotations

import argparse

from ..cli_common import _float, _positive_int
from .rewards import reward_names

FLAGS = (("cond", "cond"), ("guidance", "guidance"), ("reward", "reward"), ("svdd", "svdd_candidates"),
         ("svdd_alpha", "svdd_alpha"), ("smc", "smc_particles"), ("smc_alpha", "smc_alpha"))


def _label(text: str) -> str:
    """A label as written: a class name of the model (model.class_names) or a number, resolved by generate."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a class label (a name of the model's labels or a number)")
    return text


def add_arguments(s) -> None:
    g = s.add_argument_group("steering (a model with labels, a reward)")
    g.add_argument("--cond", type=_label, metavar="LABEL", help="class label of every sample: a label name of "
                   "labelled training data (e.g. qed-q4) or its number 0..n_classes-1 (-1 = unconditional)")
    g.add_argument("--guidance", type=_float, metavar="W", help="classifier-free guidance scale with --cond: 0 "
                   "unconditional, 1 conditional, > 1 stronger (two network calls per step); without --cond, "
                   "prompt guidance towards --prompt (the second pass sees the prompt masked)")
    g.add_argument("--reward", metavar="NAME", help=f"reward of the decoded samples for --svdd / --smc: "
                   f"{', '.join(reward_names())} (molecules, RDKit) or module:function (a list of texts -> numbers)")
    g.add_argument("--svdd", type=_positive_int, metavar="M", help="SVDD: M candidates per step, the one whose "
                   "predicted clean sample has the best reward kept")
    g.add_argument("--svdd-alpha", type=_float, metavar="A", help="SVDD: keep a candidate with probability "
                   "softmax(reward / A) (default 0: the best)")
    g.add_argument("--smc", type=_positive_int, metavar="K", help="SMC: K particles per sample, reweighted by the "
                   "reward of their predicted clean samples and resampled")
    g.add_argument("--smc-alpha", type=_float, metavar="A", help="SMC: target p(x) exp(reward / A) (default 0.1)")


def options_from(args) -> dict:
    """generate()'s steering keywords given on the command line."""
    return {key: getattr(args, flag) for flag, key in FLAGS if getattr(args, flag, None) is not None}
