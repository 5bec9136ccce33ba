"""The learned reward of DRAKES (guidance/surrogate.py): it learns an exact toy reward, saves and loads to the same
function, refuses a model whose tokens differ, and passes gradients from the reward to the fine-tuned weights."""

import pytest
import torch

from ddlm.config import ModelConfig, RunConfig
from ddlm.data.tokenizers import build_tokenizer
from ddlm.errors import UserError
from ddlm.guidance import surrogate
from ddlm.guidance.drakes import finetune
from ddlm.pipeline import SequenceModel

L, V = 8, 6


def _toy(n, seed):
    """Rows (n, L) of uniform tokens and the exact reward: the share of token 0 in the row."""
    rows = torch.randint(0, V, (n, L), generator=torch.Generator().manual_seed(seed))
    return rows, (rows == 0).float().mean(-1)


def test_surrogate_learns_the_share_of_a_token_to_low_error():
    torch.set_num_threads(1)
    rows, y = _toy(3000, 0)
    net, fit = surrogate.fit(rows, y, V, epochs=25, batch_size=128, lr=1e-2, d_model=16, n_layers=1, kernel=3)
    # the reward takes 9 values 0, 1/8, ..., 1 (std 0.13); predicting the mean errs by 0.10 on average
    assert fit["mae_of_mean"] > 0.08
    assert fit["mae"] < 0.02 and fit["pearson"] > 0.98, fit
    fresh, truth = _toy(500, 1)
    with torch.no_grad():
        assert (net(fresh) - truth).abs().mean() < 0.02
        # one-hot rows and token ids give the same value (the embedding is a matmul with the one-hot)
        assert torch.equal(net(torch.nn.functional.one_hot(fresh, V).float()), net(fresh))
    assert not any(p.requires_grad for p in net.parameters())  # frozen: fine-tuning never moves it


def _model():
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(n_layers=1, d_model=32, n_heads=2, max_len=L))
    return SequenceModel(cfg, build_tokenizer("char", "abcdefgh")).eval()


def test_save_load_round_trip_and_the_token_check(tmp_path):
    model = _model()
    Vm = model.process.vocab_size
    rows = torch.randint(0, Vm, (200, L), generator=torch.Generator().manual_seed(0))
    net, fit = surrogate.fit(rows, (rows == 0).float().mean(-1), Vm, epochs=1, d_model=8, n_layers=1)
    meta = {"reward": "share_a", "fit": fit, "tokens": surrogate.token_fingerprint(model.tokenizer, Vm)}
    surrogate.save(tmp_path / "s", net, meta)
    again, info = surrogate.load(tmp_path / "s", model)
    assert torch.equal(again(rows), net(rows)) and info["reward"] == "share_a" and info["fit"] == fit
    other = SequenceModel(model.cfg, build_tokenizer("char", "abcdefgz"))  # same size, another token
    with pytest.raises(UserError, match="another tokenizer"):
        surrogate.load(tmp_path / "s", other)
    with pytest.raises(UserError, match="holds no surrogate"):
        surrogate.load(tmp_path)


def test_the_gradient_of_the_surrogate_reaches_the_finetuned_weights():
    model = _model()
    Vm = model.process.vocab_size
    rows = torch.randint(0, Vm, (200, L), generator=torch.Generator().manual_seed(0))
    net, _ = surrogate.fit(rows, (rows == 0).float().mean(-1), Vm, epochs=2, d_model=8, n_layers=1)
    frozen = {k: v.clone() for k, v in net.state_dict().items()}
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    finetune(model, net, iterations=1, n=4, steps=4, lr=1e-2, beta=0.0)
    moved = [k for k, v in model.backbone.state_dict().items() if not torch.equal(v, before[k])]
    # the loss is -mean(net(x0)) alone (beta 0): a weight moves only if the reward's gradient reached it
    assert "head.weight" in moved and any(k.startswith("embed") for k in moved), moved
    assert all(torch.equal(v, frozen[k]) for k, v in net.state_dict().items())  # the surrogate stays as fitted
