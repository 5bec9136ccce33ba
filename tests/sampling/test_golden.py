"""Bit-identity of every sampler: the tokens and NFE of tests/sampling/golden_cases.py for seeds 0 and 1 are
those recorded in fixtures/golden.pt before the samplers were moved onto one sampling core.

If a change of a sampler's output is intended, re-record with `python tests/sampling/record_golden.py` and
say why in the commit. The transformer weights come from the fixture, so a change of initialisation does
not move them (a change of the network's forward does: re-record then too). A tiny random transformer's
near-tied confidences are ordered by the last bits of its float32 arithmetic, so its planned and routing runs
differ between CPU kernel sets: an AVX-512 machine's are recorded beside them (record_golden.py --machine)
and checked there."""

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from golden_cases import SEEDS, net_cases, run_net_case, toy_cases  # noqa: E402

GOLDEN = torch.load(HERE / "fixtures" / "golden.pt", weights_only=False)


def _weights(family):
    keys, flat = GOLDEN["weights"][family]
    out, i = {}, 0
    for key, shape in keys:
        n = int(torch.Size(shape).numel())
        out[key] = flat[i: i + n].view(shape).clone()
        i += n
    return out


# the transformer runs recorded for another CPU kernel set (record_golden.py --machine): only those that differ
MACHINE = GOLDEN.get("by_capability", {}).get(torch.backends.cpu.get_cpu_capability(), {})


def _check(name, out):
    tokens, nfe = MACHINE.get(name, GOLDEN["results"][name])
    assert out.tokens.cpu().tolist() == tokens, f"{name}: tokens changed"
    assert int(out.nfe) == nfe, f"{name}: NFE {out.nfe} != {nfe}"


TOY = toy_cases()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(TOY))
def test_toy_sampler_is_bit_identical(name, seed):
    _check(f"{name}/seed{seed}", TOY[name](torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", net_cases(), ids=lambda c: c[0])
def test_transformer_sampler_is_bit_identical(case, seed):
    _check(f"{case[0]}/seed{seed}", run_net_case(case, _weights(case[1]), torch.Generator().manual_seed(seed)))


def test_every_recorded_run_is_checked():
    names = {f"{n}/seed{s}" for n in TOY for s in SEEDS} | {f"{c[0]}/seed{s}" for c in net_cases() for s in SEEDS}
    assert names == set(GOLDEN["results"])
