"""The blockwise prefix KV cache (sampling.blockwise.PrefixKVBackbone): exact against full forwards whose
prefix keys/values are frozen by hand, row subsets, generate(kv_cache=True), and its errors."""

import pytest
import torch

import ddlm
from ddlm.cli import main
from ddlm.config import ModelConfig
from ddlm.data.tokenizers import CharTokenizer
from ddlm.models.transformer import Transformer
from ddlm.sampling.blockwise import PrefixKVBackbone, sample_blockwise
from ddlm.sampling.loop import sample_masked

V = 11  # token states of the toy backbones

BACKBONES = {  # name -> (ModelConfig overrides, window length, prefix length)
    "rotary": ({}, 12, 7),
    "learned": ({"positions": "learned"}, 12, 5),
    "rotary+learned": ({"positions": "rotary+learned"}, 12, 5),
    "grid": ({"positions": "grid", "grid": (4, 4, 2, 2)}, 16, 8),
}


def toy_backbone(kind, time_conditioning=False, n_layers=2, seed=0):
    overrides, W, P = BACKBONES[kind]
    cfg = ModelConfig(n_layers=n_layers, d_model=32, n_heads=2, max_len=W, time_conditioning=time_conditioning,
                      **overrides)
    torch.manual_seed(seed)
    net = Transformer(cfg, V).eval()
    with torch.no_grad():  # large random weights (adaLN too, whose zero init would hide t): differences show
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    return net, W, P


def frozen_prefix_forward(net, x_then, t_then, x_now, t_now, P):
    """Reference: a full forward of (x_now, t_now) in which every layer's prefix keys/values are those of the
    full forward of (x_then, t_then) (hooks on the qkv projections; rotary comes after, on the same positions)."""
    D = net.cfg.d_model
    seen, hooks = [], []
    for block in net.blocks:
        hooks.append(block.qkv.register_forward_hook(lambda m, i, out: seen.append(out.clone())))
    net(x_then, t_then)
    for h in hooks:
        h.remove()
    hooks = []
    for block, then in zip(net.blocks, seen):
        def freeze(m, i, out, then=then):
            out = out.clone()
            out[:, :P, D:] = then[:, :P, D:]  # (B, L, 3D) = q | k | v: the prefix's k and v from then
            return out
        hooks.append(block.qkv.register_forward_hook(freeze))
    try:
        return net(x_now, t_now)
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("kind", list(BACKBONES))
@pytest.mark.parametrize("timed", [False, True], ids=["time-free", "time-conditioned"])
def test_cached_call_is_the_full_forward_with_a_frozen_prefix(kind, timed):
    net, W, P = toy_backbone(kind, timed)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (3, W), generator=g)
    t = torch.rand(3, generator=g) if timed else None
    with torch.no_grad():
        full = net(x, t)
    kv = PrefixKVBackbone(net, P, n=3)
    assert torch.equal(kv(x, t), full)  # the first call is the full forward
    same = kv(x, t)  # block only, against the cached prefix
    assert kv.full_calls == 1 and kv.calls == 2
    torch.testing.assert_close(same, full, atol=1e-5, rtol=0)

    # change some block tokens (and t): now the cache is stale, exactly as a frozen-prefix forward
    x2 = x.clone()
    x2[:, P + 1:: 2] = (x2[:, P + 1:: 2] + 1) % V
    t2 = torch.rand(3, generator=g) if timed else None
    cached = kv(x2, t2)
    with torch.no_grad():
        ref = frozen_prefix_forward(net, x, t, x2, t2, P)
        naive = net(x2, t2)
    assert kv.full_calls == 1
    torch.testing.assert_close(cached[:, P:], ref[:, P:], atol=1e-5, rtol=0)
    assert torch.equal(cached[:, :P], full[:, :P])  # the prefix's logits are those of the last full forward
    assert (cached[:, P:] - naive[:, P:]).abs().max() > 1e-3  # the staleness is real, and the only difference


def test_refresh_every_n_calls():
    net, W, P = toy_backbone("rotary")
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, V, (2, W), generator=g)
    x2 = x.clone()
    x2[:, P:] = torch.randint(0, V, (2, W - P), generator=g)
    kv = PrefixKVBackbone(net, P, n=2, refresh=2)
    kv(x)
    stale = kv(x2)  # call 1: cached
    fresh = kv(x2)  # call 2: 2 % 2 == 0, a full forward again
    with torch.no_grad():
        naive = net(x2)
    assert kv.full_calls == 2
    assert torch.equal(fresh, naive)
    assert (stale - naive).abs().max() > 1e-3
    again = kv(x2)  # call 3: cached, now against the refreshed prefix of x2 itself
    torch.testing.assert_close(again, naive, atol=1e-5, rtol=0)


def test_row_subsets_use_their_own_rows_of_the_cache():
    net, W, P = toy_backbone("rotary", True)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, V, (4, W), generator=g)
    t = torch.rand(4, generator=g)
    x2 = x.clone()
    x2[:, P:] = torch.randint(0, V, (4, W - P), generator=g)
    kv = PrefixKVBackbone(net, P, n=4)
    kv(x, t)
    rows = torch.tensor([2, 0])
    kv.select_rows(rows)
    sub = kv(x2[rows], t[rows])
    with torch.no_grad():
        ref = frozen_prefix_forward(net, x, t, x2, t, P)
    torch.testing.assert_close(sub[:, P:], ref[rows, P:], atol=1e-5, rtol=0)
    assert kv.full_calls == 1
    with pytest.raises(ValueError, match="without select_rows"):
        kv(x2[rows], t[rows])  # a subset must be announced


def test_rows_first_seen_in_a_subset_get_a_full_forward():
    net, W, P = toy_backbone("rotary")
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, V, (4, W), generator=g)
    kv = PrefixKVBackbone(net, P, n=4)
    kv.select_rows(torch.tensor([1, 2, 3]))
    kv(x[[1, 2, 3]])
    x2 = x.clone()
    x2[:, P:] = torch.randint(0, V, (4, W - P), generator=g)
    kv.select_rows(torch.tensor([0, 1]))  # row 0 has no cache yet: both rows get a full forward
    out = kv(x2[[0, 1]])
    with torch.no_grad():
        assert torch.equal(out, net(x2[[0, 1]]))
    assert kv.full_calls == 2
    out = kv(x2)  # every row is captured now (rows 0 and 1 from x2, rows 2 and 3 from x): a cached call
    assert kv.full_calls == 2
    with torch.no_grad():
        ref = frozen_prefix_forward(net, x, None, x2, None, P)
        torch.testing.assert_close(out[[0, 1], P:], net(x2[[0, 1]])[:, P:], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[[2, 3], P:], ref[[2, 3], P:], atol=1e-5, rtol=0)


def test_ar_kv_cache_still_appends():
    net, W, _ = toy_backbone("rotary")
    x = torch.randint(0, V, (2, W), generator=torch.Generator().manual_seed(5))
    caches = [{} for _ in net.blocks]
    with torch.no_grad():
        net(x[:, :5], kv_caches=caches)
        net(x[:, 5:7], kv_caches=caches)
    assert all(c["k"].shape[-2] == 7 and c["v"].shape[-2] == 7 for c in caches)


# ---- through SequenceModel.generate ------------------------------------------------------------------------
TOK = CharTokenizer.from_text("abcdefgh ")


def toy_model(n_layers=2, family="mdlm", time_conditioning=False, max_len=16):
    cfg = ddlm.apply_overrides(ddlm.load_preset("tiny"), [
        f"model.n_layers={n_layers}", "model.d_model=32", f"model.max_len={max_len}", f"process.name={family}",
        f"model.time_conditioning={str(time_conditioning).lower()}"])
    torch.manual_seed(0)
    model = ddlm.SequenceModel(cfg, TOK).eval()
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("sampler", ["ancestral", "cached", "planned"])
def test_one_layer_model_samples_exactly_as_without_the_cache(sampler):
    # one layer: the prefix's keys/values depend on the prefix tokens alone, so the cache is exact
    model = toy_model(n_layers=1)
    kw = dict(n=3, length=40, steps=8, sampler=sampler, prompt="abc", seed=7, decode=False)
    plain = model.generate(**kw)
    kv = model.generate(**kw, kv_cache=True)
    assert torch.equal(kv.tokens, plain.tokens)
    assert (kv.nfe, kv.row_evals) == (plain.nfe, plain.row_evals)


class Spy(PrefixKVBackbone):
    made = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        Spy.made.append(self)


@pytest.mark.parametrize("timed", [False, True], ids=["time-free", "time-conditioned"])
def test_generate_beyond_the_context(monkeypatch, timed):
    model = toy_model(time_conditioning=timed)
    monkeypatch.setattr(ddlm.pipeline, "PrefixKVBackbone", Spy)
    Spy.made = []
    fixed = torch.zeros(45, dtype=torch.long)
    mask = torch.zeros(45, dtype=torch.bool)
    fixed[:3], mask[:3] = model.encode("abc"), True
    fixed[30:34], mask[30:34] = model.encode("hhhh"), True
    out = model.generate(n=2, length=45, steps=6, fixed=fixed, fixed_mask=mask, seed=1, kv_cache=True)
    assert out.tokens.shape == (2, 45) and not (out.tokens == model.process.mask_id).any()
    assert all(t[:3] == "abc" and t[30:34] == "hhhh" for t in out.texts)
    # context 16, stride 8: windows end at 16, 24, 32, 40, 45; every window after the first has a prefix
    assert [(s.prefix, s.full_calls) for s in Spy.made] == [(8, 1), (8, 1), (8, 1), (11, 1)]
    assert all(2 <= s.calls <= 6 for s in Spy.made)
    assert 1 <= out.nfe - sum(s.calls for s in Spy.made) <= 6  # + the first window's calls
    assert out.row_evals == 2 * out.nfe  # ancestral: both rows at every call
    refreshed = model.generate(n=2, length=45, steps=6, fixed=fixed, fixed_mask=mask, seed=1, kv_cache=True,
                               kv_refresh=2)
    assert [s.full_calls for s in Spy.made[4:]] == [(s.calls + 1) // 2 for s in Spy.made[4:]]
    assert refreshed.tokens.shape == (2, 45) and all(t[30:34] == "hhhh" for t in refreshed.texts)
    short = model.generate(n=2, length=16, steps=6, seed=1, kv_cache=True)  # one window: nothing to cache
    assert torch.equal(short.tokens, model.generate(n=2, length=16, steps=6, seed=1).tokens)
    assert len(Spy.made) == 8


def test_the_uncached_sliding_windows_are_unchanged():
    model = toy_model()
    out = model.generate(n=2, length=30, steps=5, prompt="ab", seed=3, decode=False)
    # by hand: windows [0, 16), [8, 24), [14, 30), each sampling its masked positions with the same generator
    g = torch.Generator().manual_seed(3)
    x = torch.full((2, 30), -1)
    x[:, :2] = model.encode("ab")
    for start, end in [(0, 16), (8, 24), (14, 30)]:
        w = x[:, start:end]
        given = w >= 0
        w = sample_masked(model.backbone, model.process, 2, end - start, 5, fixed=w.clamp_min(0), fixed_mask=given,
                          generator=g).tokens
        x[:, start:end] = w
    assert torch.equal(out.tokens, x)


def test_sample_blockwise_passes_the_prefix():
    seen = []

    def window(n, length, fixed, mask, prefix):
        seen.append((length, prefix, int(mask[0].sum())))
        return ddlm.sampling.loop.SampleOutput(torch.ones(n, length, dtype=torch.long), 1, n, 0.0)

    out = sample_blockwise(window, 1, 50, 16, 6)
    # ends 16, 22, ..., 46, 50: each window's prefix is exactly its finished (given) positions
    assert seen == [(16, 0, 0)] + [(16, 10, 10)] * 5 + [(16, 12, 12)]
    assert out.tokens.shape == (1, 50) and out.nfe == 7


# ---- errors -------------------------------------------------------------------------------------------------
def test_bad_options():
    model = toy_model()
    with pytest.raises(ddlm.UserError, match="kv_refresh must be a whole number"):
        model.generate(length=40, steps=2, kv_cache=True, kv_refresh=-1)
    with pytest.raises(ddlm.UserError, match="add kv_cache=True"):
        model.generate(length=40, steps=2, kv_refresh=3)
    ar = toy_model(family="ar")
    with pytest.raises(ddlm.UserError, match="ar family already samples with its own KV cache"):
        ar.generate(length=40, kv_cache=True)
    for family in ("d3pm-absorbing", "rdm-absorbing"):
        other = toy_model(family=family, time_conditioning=family.startswith("d3pm"))
        with pytest.raises(ddlm.UserError, match=f"the {family} family samples with its own loop"):
            other.generate(length=40, steps=2, kv_cache=True)


def test_cli(tmp_path, capsys):
    model = toy_model()
    model.save_pretrained(tmp_path / "m")
    m = str(tmp_path / "m")
    assert main(["sample", m, "--n", "2", "--length", "40", "--steps", "4", "--kv-cache", "--kv-refresh", "2",
                 "--json"]) == 0
    res = __import__("json").loads(capsys.readouterr().out)
    assert [len(s) for s in res["samples"]] == [40, 40] and res["nfe"] > 4  # windows end at 16, 24, 32, 40
    assert main(["sample", m, "--length", "16", "--steps", "2", "--kv-cache", "--json"]) == 0
    assert "no effect" in capsys.readouterr().err
    assert main(["sample", m, "--length", "40", "--steps", "2", "--kv-refresh", "2"]) == 2
    err = capsys.readouterr().err
    assert "--kv-cache" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["sample", m, "--kv-cache", "--kv-refresh", "0"])
