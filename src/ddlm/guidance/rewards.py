"""Rewards by name for reward-guided decoding: `reward(texts) -> (B,) float`, higher is better.

Molecules (decoded SMILES, scored with RDKit through ddlm.tasks.molecules.metrics); an invalid molecule (RDKit
does not parse and sanitise it, or it is empty) gets the reward's FLOOR:

    qed         drug-likeness QED in [0, 1] (Bickerton et al. 2012)                      floor 0
    logp        Crippen logP                                                              floor -10
    logp_range  0 inside logP in [LOGP_RANGE], minus the distance to it outside           floor -10
    sa          (10 - SA_Score) / 9 in [0, 1]: 1 = easiest to synthesise (Ertl & Schuffenhauer 2009)  floor 0
    valid       1 for a valid molecule                                                    floor 0

A user's own reward is any callable on a list of texts, or `module:function` naming one (`--reward`).
Scores are cached by text: the predicted clean sequences of reward-guided decoding repeat a lot.
"""

from __future__ import annotations

import functools
import importlib

from ..errors import UserError

LOGP_RANGE = (1.0, 3.0)
FLOOR = {"qed": 0.0, "logp": -10.0, "logp_range": -10.0, "sa": 0.0, "valid": 0.0}


def _metrics():
    from ..tasks.molecules import metrics

    return metrics


def _qed(mol) -> float:
    return float(_metrics()._rdkit()["QED"].qed(mol))


def _logp(mol) -> float:
    return float(_metrics()._rdkit()["Crippen"].MolLogP(mol))


def _logp_range(mol) -> float:
    lo, hi = LOGP_RANGE
    v = _logp(mol)
    return -max(lo - v, 0.0, v - hi)


def _sa(mol) -> float:
    return (10.0 - float(_metrics()._sascorer().calculateScore(mol))) / 9.0


SCORERS = {"qed": _qed, "logp": _logp, "logp_range": _logp_range, "sa": _sa, "valid": lambda mol: 1.0}


@functools.lru_cache(maxsize=200_000)
def _score(name: str, text: str) -> float:
    mol = _metrics().to_mol(text)
    return FLOOR[name] if mol is None else SCORERS[name](mol)


def molecule_reward(name: str):
    """The named molecule reward as a function texts -> list of floats."""
    if name not in SCORERS:
        raise UserError(f"unknown reward {name!r}; choose one of {', '.join(SCORERS)} or module:function")
    _metrics()._rdkit()  # RDKit missing: one line naming the install command, before any sampling

    def reward(texts):
        return [_score(name, t) for t in texts]

    reward.__name__ = name
    return reward


REWARDS = {name: functools.partial(molecule_reward, name) for name in SCORERS}  # name -> builder


def reward_names() -> tuple[str, ...]:
    return tuple(REWARDS)


def resolve_reward(spec):
    """(reward(texts) -> (B,) floats, its name) from a callable, a registered name or `module:function`."""
    if callable(spec):
        return spec, getattr(spec, "__name__", type(spec).__name__)
    if not isinstance(spec, str) or not spec:
        raise UserError(f"reward must be a name ({', '.join(REWARDS)}), module:function or a callable, got {spec!r}")
    if spec in REWARDS:
        return REWARDS[spec](), spec
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"cannot load the reward {spec!r} ({type(e).__name__}: {e})") from None
        if not callable(fn):
            raise UserError(f"the reward {spec!r} is not callable")
        return fn, spec
    raise UserError(f"unknown reward {spec!r}; choose one of {', '.join(REWARDS)} or give module:function")
