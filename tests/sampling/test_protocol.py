"""Every family's process implements the process contract, and no two families share a process object."""

import pytest
import torch

from ddlm.config import ProcessConfig
from ddlm.families import build_family
from ddlm.processes.protocol import MaskedProcess, Process


@pytest.mark.parametrize("name", ["mdlm", "d3pm-uniform", "d3pm-absorbing", "rdm-absorbing", "rdm-multinomial", "ar"])
def test_every_process_gives_log_probs_of_x0_under_one_name(name):
    proc = build_family(ProcessConfig(name=name, steps=10), 5).process
    assert isinstance(proc, Process)
    logits = torch.randn(2, 3, proc.n_states)
    logp = proc.log_probs(logits)
    assert logp.shape == (2, 3, 5)  # over the V real tokens only
    torch.testing.assert_close(logp.double().exp().sum(-1), torch.ones(2, 3, dtype=torch.float64))
    # the softmax of the real-token logits, whatever the extra state's logit
    torch.testing.assert_close(logp.double(), torch.log_softmax(logits[..., :5].double(), -1), atol=1e-6, rtol=0)
    assert isinstance(proc, MaskedProcess) == (name in ("mdlm", "rdm-absorbing"))


def test_a_d3pm_process_is_never_shared_between_two_families():
    """Processes move between devices in place: a process shared by two models would move under the other.
    The expensive build is cached, but each family gets its own copy."""
    a = build_family(ProcessConfig(name="d3pm-uniform", steps=10), 5).process
    b = build_family(ProcessConfig(name="d3pm-uniform", steps=10), 5).process
    assert a is not b
    a.to("meta")
    assert b.abar.device.type == "cpu" and b.m.device.type == "cpu"
    c = build_family(ProcessConfig(name="d3pm-uniform", steps=10), 5).process
    assert c.abar.device.type == "cpu"  # the cached original was not moved either
    torch.testing.assert_close(c.abar, b.abar)

