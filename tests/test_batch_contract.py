"""The batch contract: every objective takes (model, batch, generator); a Batch carries tokens, a loss mask, an
optional condition and a key-padding mask, and the backbone takes the condition and the mask.

Per-token normalisation: a loss in nats per token is the sum over counted positions divided by their number."""

import pytest
import torch

from ddlm.config import ModelConfig, ProcessConfig
from ddlm.data.batches import Batch, BlockBatches, as_batch
from ddlm.families import build_family
from ddlm.models.transformer import Transformer

V, L, D = 7, 12, 16
FAMILIES = ["mdlm", "d3pm-uniform", "d3pm-absorbing", "rdm-absorbing", "rdm-multinomial", "ar"]


def _net(family: str, n_classes: int = 0, causal: bool = False, time: bool = False, seed: int = 0):
    fam = build_family(ProcessConfig(name=family, steps=20), V)
    torch.manual_seed(seed)
    cfg = ModelConfig(n_layers=2, d_model=D, n_heads=2, max_len=L, time_conditioning=time, n_classes=n_classes)
    net = Transformer(cfg, fam.process.n_states, causal=fam.causal or causal).eval()
    return fam, net


def _loss(fam, net, batch, seed=3):
    return fam.objective(net, batch, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_full_mask_batch_gives_the_bare_tensor_loss_bit_for_bit(family):
    fam, net = _net(family, time=family.startswith(("d3pm", "rdm-m")))
    x = torch.randint(0, V, (4, L), generator=torch.Generator().manual_seed(1))
    bare = _loss(fam, net, x)
    full = _loss(fam, net, Batch(x, torch.ones(4, L, dtype=torch.bool)))
    assert full.keys() == bare.keys()
    for k in bare:
        assert torch.equal(full[k], bare[k]), k
    # and a mask that excludes something changes it (the mask reaches the loss)
    part = torch.ones(4, L, dtype=torch.bool)
    part[:, L // 2:] = False
    assert not torch.equal(_loss(fam, net, Batch(x, part))["loss"], bare["loss"])


@pytest.mark.parametrize("family", ["mdlm", "ar"])
def test_padding_never_changes_the_loss_of_the_real_tokens(family):
    fam, net = _net(family)
    g = torch.Generator().manual_seed(2)
    for n in (3, 7, 9):  # a record of n tokens alone, then padded to L with junk that does not count
        rec = torch.randint(0, V, (1, n), generator=g)
        junk = torch.randint(0, V, (1, L - n), generator=g)
        mask = torch.zeros(1, L, dtype=torch.bool)
        mask[:, :n] = True
        alone = _loss(fam, net, rec)
        padded = _loss(fam, net, Batch(torch.cat([rec, junk], 1), mask))
        for k in alone:
            assert torch.allclose(padded[k], alone[k], atol=1e-6, rtol=0), (k, n)


def test_the_per_token_loss_is_the_mean_over_counted_positions():
    """AR's NLL is exact: a padded batch of records of n_i tokens gives sum_i NLL_i / sum_i n_i."""
    fam, net = _net("ar")
    g = torch.Generator().manual_seed(4)
    lengths = (2, 5, 12)
    x = torch.randint(0, V, (3, L), generator=g)
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        nll = sum(float(fam.objective.bound(net, x[i:i + 1, :n])) for i, n in enumerate(lengths))
        loss = float(fam.objective(net, Batch(x, mask))["loss"])
    assert loss == pytest.approx(nll / sum(lengths), abs=1e-6)
    assert loss != pytest.approx(nll / x.numel(), abs=1e-3)  # not the mean over every position


@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_mask_makes_real_logits_independent_of_padded_tokens(causal):
    _, net = _net("mdlm", causal=causal)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, V, (3, L), generator=g)
    keys = torch.ones(3, L, dtype=torch.bool)
    keys[0, 4:] = False
    keys[1, :3] = False  # padding on the left too (a causal query there sees only itself: no NaN)
    keys[2, 2:9] = False
    y = torch.where(keys, x, torch.randint(0, V, (3, L), generator=g))
    with torch.no_grad():
        a, b = net(x, mask=keys), net(y, mask=keys)
        plain_a, plain_b = net(x), net(y)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert torch.allclose(a[keys], b[keys], atol=1e-6, rtol=0)
    # without the mask the padded tokens do reach the real positions (so the check above is not vacuous)
    seen = keys.clone()
    if causal:
        seen[1] = False  # row 1's changed tokens come first: every later real position sees them
        seen[1, 3:] = True
    assert not torch.allclose(plain_a[seen], plain_b[seen], atol=1e-4)
    # an all-True mask is the unmasked network
    with torch.no_grad():
        assert torch.allclose(net(x, mask=torch.ones_like(keys)), plain_a, atol=1e-6)


def test_key_padding_mask_through_the_kv_cache_matches_the_full_forward():
    """A cached prefix plus new tokens, with a mask over all keys (cached first), gives the full forward's logits."""
    _, net = _net("ar", causal=True)
    g = torch.Generator().manual_seed(6)
    x = torch.randint(0, V, (2, L), generator=g)
    keys = torch.ones(2, L, dtype=torch.bool)
    keys[0, 2:4] = False
    with torch.no_grad():
        full = net(x, mask=keys)
        caches = [{} for _ in net.blocks]
        first = net(x[:, :5], kv_caches=caches, mask=keys[:, :5])
        rest = [net(x[:, i:i + 1], kv_caches=caches, mask=keys[:, :i + 1]) for i in range(5, L)]
    got = torch.cat([first, *rest], 1)
    assert torch.allclose(got[keys], full[keys], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cached"):
        net(x[:, :1], kv_caches=caches, mask=keys[:, :1])  # the mask must cover the cached keys too


@pytest.mark.parametrize("time", [False, True])
def test_a_condition_reaches_the_backbone(time):
    _, net = _net("mdlm", n_classes=3, time=time)
    x = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(7))
    t = torch.full((2,), 0.5)
    with torch.no_grad():
        out = {c: net(x, t, cond=torch.tensor([c, c])) for c in (-1, 0, 1, 2)}
        none = net(x, t)
    assert net.label.weight.abs().sum() > 0
    for a in (0, 1, 2):
        for b in (-1, 0, 1, 2):
            if a != b:
                assert not torch.allclose(out[a], out[b], atol=1e-4), (a, b)
    assert torch.equal(none, out[-1])  # no condition = the null label
    with pytest.raises(ValueError, match="-1..2"):
        net(x, t, cond=torch.tensor([3, 0]))


def test_a_condition_reaches_the_loss():
    fam, net = _net("mdlm", n_classes=2)
    x = torch.randint(0, V, (4, L), generator=torch.Generator().manual_seed(8))
    a = _loss(fam, net, Batch(x, cond=torch.zeros(4, dtype=torch.long)))["loss"]
    b = _loss(fam, net, Batch(x, cond=torch.ones(4, dtype=torch.long)))["loss"]
    assert not torch.allclose(a, b, atol=1e-6)


def test_an_unconditional_backbone_keeps_its_state_dict_and_refuses_labels():
    _, plain = _net("mdlm")
    _, cond = _net("mdlm", n_classes=4)
    assert not any(k.startswith("label") for k in plain.state_dict())
    assert set(cond.state_dict()) - set(plain.state_dict()) == {"label.weight"}
    assert cond.label.weight.shape == (5, D)  # 4 classes + the null label
    x = torch.randint(0, V, (2, L))
    with torch.no_grad():
        assert torch.equal(plain(x, cond=None), plain(x))
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, cond=torch.tensor([0, 1]))


def test_batch_chunk_splits_every_field_by_rows():
    x = torch.arange(5 * L).view(5, L)
    mask = torch.rand(5, L, generator=torch.Generator().manual_seed(9)) < 0.5
    cond = torch.tensor([0, 1, 2, 3, 4])
    b = Batch(x, mask, cond)
    parts = b.chunk(2)
    assert [len(p) for p in parts] == [len(c) for c in x.chunk(2)] == [3, 2]
    assert torch.equal(torch.cat([p.tokens for p in parts]), x)
    assert torch.equal(torch.cat([p.mask for p in parts]), mask)
    assert torch.equal(torch.cat([p.cond for p in parts]), cond)
    assert [len(p) for p in b.chunk(8)] == [1] * 5
    # a bare tensor is a Batch in which everything counts; an all-True mask is stored as None
    assert as_batch(x).mask is None and Batch(x, torch.ones(5, L, dtype=torch.bool)).mask is None
    with pytest.raises(ValueError):
        Batch(x, mask[:, :3])


def test_the_training_loop_hands_objectives_batch_chunks(tmp_path):
    """grad_accum = 3 with a masked batch source: the objective sees Batches whose rows and masks are the
    step's batch split in three, in order (the DDP no_sync loop runs over Batch.chunk)."""
    from ddlm.config import apply_overrides, load_preset
    from ddlm.train.loop import Trainer

    cfg = apply_overrides(load_preset("tiny"), ["train.max_steps=2", "model.max_len=16", "train.threads=1",
                                                "train.batch_size=6", "train.grad_accum=3", "train.eval_every=0",
                                                "train.ckpt_every=0", "train.log_every=1"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    blocks = trainer.batches.blocks
    masks = torch.arange(blocks.shape[1])[None, :] < (torch.arange(len(blocks)) % 16 + 1)[:, None]
    trainer.batches = BlockBatches(blocks, 6, cfg.train.seed, masks=masks)
    objective = trainer.model.family.objective
    seen = []

    def spy(model, batch, generator):
        seen.append(batch)
        return objective(model, batch, generator)

    trainer.model.family.objective = spy
    trainer.run()
    assert len(seen) == 6 and all(isinstance(b, Batch) for b in seen)
    for step in range(2):
        whole = trainer.batches.batch(step)
        parts = seen[3 * step: 3 * step + 3]
        assert [len(p) for p in parts] == [2, 2, 2]
        assert torch.equal(torch.cat([p.tokens for p in parts]), whole.tokens)
        got = torch.cat([p.mask if p.mask is not None else torch.ones_like(p.tokens, dtype=torch.bool)
                         for p in parts])
        assert whole.mask is not None and torch.equal(got, whole.mask)
