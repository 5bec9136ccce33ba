"""Position encodings of the backbone: rotary alone is relative, so a bidirectional model whose inputs are all MASK
gives every position the same logits (its first draws of a record row cannot depend on where they land);
learned and rotary+learned tell the positions apart, and rotary+learned keeps rotary's relative attention."""

import pytest
import torch

from ddlm.config import ModelConfig
from ddlm.errors import UserError
from ddlm.models.transformer import Transformer

V, L = 9, 10  # states (the last one plays MASK), context


def _net(positions: str) -> Transformer:
    torch.manual_seed(0)
    net = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=2, max_len=L, positions=positions), V).eval()
    with torch.no_grad():  # large random weights so that any dependence on position shows
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    return net


@pytest.mark.parametrize("positions, blind", [("rotary", True), ("learned", False), ("rotary+learned", False)])
def test_an_all_masked_row_is_position_blind_under_rotary_alone(positions, blind):
    net = _net(positions)
    with torch.no_grad():
        logits = net(torch.full((1, L), V - 1))[0]  # (L, V)
    spread = (logits - logits[0]).abs().max().item()
    assert (spread < 1e-5) if blind else (spread > 1e-2)


def test_rotary_and_learned_together_have_both_parts_and_learned_limits_the_context():
    net = _net("rotary+learned")
    assert net.pos.weight.shape == (L, 32)
    assert all(block.rotary is not None for block in net.blocks)
    with pytest.raises(UserError, match="learned positions cannot extrapolate"):
        net(torch.zeros(1, L + 1, dtype=torch.long))
    with pytest.raises(UserError, match="rotary\\+learned"):
        _net("absolute")
