"""adaLN-Zero time conditioning (Peebles & Xie 2023): a time-conditioned block is exactly the identity at
initialisation, its gates receive gradient so it can learn, and models without time conditioning are untouched."""

import pytest
import torch

from ddlm.config import ModelConfig
from ddlm.models.layers import Block, Rotary, TimeEmbedding
from ddlm.models.transformer import Transformer

D, H, L = 16, 2, 8


def _cfg(time_conditioning: bool, n_layers: int = 2) -> ModelConfig:
    return ModelConfig(n_layers=n_layers, d_model=D, n_heads=H, mlp_ratio=4.0, dropout=0.0, max_len=L,
                       positions="rotary", time_conditioning=time_conditioning)


def _timed_block(seed: int = 0) -> tuple[Block, TimeEmbedding]:
    torch.manual_seed(seed)
    block = Block(D, H, 4.0, 0.0, causal=False, rotary=Rotary(D // H, L), cond_dim=D)
    return block, TimeEmbedding(D)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_time_conditioned_block_is_identity_at_init(seed):
    block, time = _timed_block(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, L, D, generator=g) * 3.0
    cond = time(torch.rand(3, generator=g))  # (3, D), nonzero
    assert cond.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(block(x, cond), x)


def test_time_conditioned_transformer_at_init_is_the_head_on_the_embedding():
    torch.manual_seed(0)
    net = Transformer(_cfg(True, n_layers=3), 7).eval()
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 7, (4, L), generator=g)
    t = torch.rand(4, generator=g)
    with torch.no_grad():
        # rotary positions add nothing to the embedding, so with identity blocks only embed -> norm -> head remain
        assert torch.equal(net(x, t), net.head(net.norm(net.embed(x))))


def test_gates_get_gradient_and_the_block_learns():
    block, time = _timed_block(0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, L, D, generator=g)
    cond = time(torch.rand(2, generator=g)).detach()
    target = torch.randn(2, L, D, generator=g)
    ((block(x, cond) - target) ** 2).sum().backward()
    gw = block.ada.weight.grad.view(6, D, D)  # rows: shift1, scale1, gate1, shift2, scale2, gate2
    gb = block.ada.bias.grad.view(6, D)
    for k in (2, 5):  # the gates see the sublayers' outputs
        assert gw[k].abs().sum() > 0 and gb[k].abs().sum() > 0
    for k in (0, 1, 3, 4):  # shift and scale act through a zero gate, as in DiT: no gradient on the first step
        assert torch.equal(gw[k], torch.zeros(D, D)) and torch.equal(gb[k], torch.zeros(D))
    with torch.no_grad():
        for p in block.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
        assert not torch.allclose(block(x, cond), x)


def test_model_without_time_conditioning_is_unchanged():
    """Checksums recorded before the gates became zero-start: the untimed forward and the initialisation's
    consumption of the random stream (of timed models too) must not move."""
    for timed, param_sum, next_draw in ((False, 77.9826043734356, 0.27823013067245483),
                                        (True, 14.19890591066769, 0.022594153881072998)):
        torch.manual_seed(0)
        net = Transformer(_cfg(timed), 7).eval()
        g = torch.Generator().manual_seed(1)
        x = torch.randint(0, 7, (3, L), generator=g)
        t = torch.rand(3, generator=g)
        with torch.no_grad():
            out = net(x, t if timed else None).double()
        assert sum(p.double().sum().item() for p in net.parameters()) == pytest.approx(param_sum, rel=1e-9)
        assert torch.rand(1).item() == pytest.approx(next_draw, rel=1e-7)
        if not timed:
            assert out.sum().item() == pytest.approx(1.7699058642610908, rel=1e-6)
            assert out.abs().sum().item() == pytest.approx(8.550191978923976, rel=1e-6)
