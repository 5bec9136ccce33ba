"""A data.padding=skip model draws each sample's length from its training lengths first (sampling/lengths.py)."""

import math

import pytest
import torch

from ddlm import SequenceModel, apply_overrides, load_preset
from ddlm.data.tokenizers import CharTokenizer
from ddlm.errors import UserError
from ddlm.eval.records import length_prior
from ddlm.sampling.lengths import draw_lengths, length_window, min_lengths, prior_probs

L = 16


def _model(padding="skip", family="mdlm"):
    from ddlm.families import configure

    ov = [f"process.name={family}", f"model.max_len={L}", "data.records=lines", f"data.padding={padding}",
          "train.threads=1"]
    cfg = configure(apply_overrides(load_preset("tiny"), ov), ov)
    torch.manual_seed(0)
    return SequenceModel(cfg, CharTokenizer("abcdefgh", specials=True)).eval()


def test_prior_probs_are_the_smoothed_prior_eval_charges():
    lengths = torch.tensor([2, 2, 3, 7, 7, 7])
    p = prior_probs(torch.bincount(lengths, minlength=L + 1), L)
    assert p[0] == 0 and math.isclose(float(p.sum()), 1.0)
    assert math.isclose(float(p[7]), (3 + 1 / L) / (6 + 1))  # one pseudo-record over n = 1..L
    torch.testing.assert_close(-torch.log(p[1:]), length_prior(lengths, L)[1:])


def test_window_puts_eos_at_the_drawn_length_hides_the_padding_and_keeps_a_prompt():
    lengths = torch.tensor([3, 5])
    prompt = torch.tensor([[4, 6, 0, 0, 0, 0, 0, 0]])
    given = torch.tensor([[True, True, False, False, False, False, False, False]])
    tokens, fixed, keys = length_window(lengths, 8, eos_id=9, pad_id=10, fixed=prompt, fixed_mask=given)
    assert tokens[0].tolist()[:2] == [4, 6] and tokens[0, 2] == 9 and (tokens[0, 3:] == 10).all()
    assert tokens[1, 4] == 9 and (tokens[1, 5:] == 10).all()
    assert fixed[1].tolist() == [True, True, False, False, True, True, True, True]  # 2 and 3 left to decode
    assert keys.sum(-1).tolist() == [3, 5]  # the record and its <eos> are attended, <pad> never
    assert min_lengths(2, given).tolist() == [3, 3]  # two given tokens, then at least <eos>


def test_drawn_lengths_respect_the_prompt_and_the_window():
    p = prior_probs(torch.tensor([0, 50, 0, 0, 40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]), L)
    g = torch.Generator().manual_seed(0)
    n = draw_lengths(p, 2000, 8, torch.full((2000,), 3), g)
    assert int(n.min()) >= 3 and int(n.max()) <= 8
    with pytest.raises(UserError, match="no room for <eos>"):
        draw_lengths(p, 1, 8, torch.tensor([9]), g)


def test_generated_lengths_follow_the_training_lengths_chi_square():
    model = _model()
    counts = torch.zeros(L + 1, dtype=torch.long)
    counts[[3, 8, 14]] = torch.tensor([500, 300, 200])  # lengths in tokens, <eos> included
    model.length_counts = counts
    n = 600
    out = model.generate(n=n, max_length=L, seed=1, steps=4, batch_size=200)
    tok = model.tokenizer
    assert out.lengths is not None and len(out.texts) == n
    # no <eos> or <pad> inside a text; each row ends with exactly one <eos> after its text
    for row, k in zip(out.tokens, out.lengths):
        assert not ((row[:k] == tok.eos_id) | (row[:k] == tok.pad_id)).any()
        assert row[k] == tok.eos_id
    p = prior_probs(counts, L)  # expected in 4 cells: the three lengths and everything else
    observed = torch.bincount(out.lengths + 1, minlength=L + 1).double()
    cells = [[3], [8], [14], [k for k in range(1, L + 1) if k not in (3, 8, 14)]]
    obs = torch.stack([observed[c].sum() for c in cells])
    exp = torch.stack([p[c].sum() for c in cells]) * n
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    assert chi2 < 16.27  # 3 degrees of freedom, p = 0.001
    assert obs[0] > obs[1] > obs[2]


def test_a_prompt_is_kept_and_every_length_leaves_room_for_it():
    model = _model()
    model.length_counts = torch.bincount(torch.tensor([2] * 50 + [10] * 50), minlength=L + 1)
    out = model.generate(n=40, max_length=L, prompt="abc", seed=0, steps=4)
    assert all(t.startswith("abc") for t in out.texts)
    assert int(out.lengths.min()) >= 3  # length 2 (one token and <eos>) cannot hold the prompt


def test_only_skip_models_draw_lengths_and_the_counts_are_saved(tmp_path):
    assert _model("skip").draws_lengths()
    assert not _model("learn").draws_lengths() and not _model("skip", "ar").draws_lengths()
    model = _model()
    model.length_counts = torch.bincount(torch.tensor([4, 4, 9]), minlength=L + 1)
    model.save_pretrained(tmp_path / "m")
    again = SequenceModel.from_pretrained(tmp_path / "m")
    assert again.length_counts.tolist() == model.length_counts.tolist()


def test_training_a_skip_model_saves_its_lengths(tmp_path):
    import ddlm

    path = tmp_path / "lines.txt"
    path.write_text("ab\nabcd\nab\nabcdefg\n" * 8)
    ov = ["process.name=mdlm", f"data.source={path}", "data.records=lines",
          "data.tokenizer=char", f"model.max_len={L}", "train.max_steps=2", "train.threads=1",
          "train.eval_every=0", "train.ckpt_every=0", "data.val_fraction=0.25"]
    model = ddlm.fit(apply_overrides(load_preset("tiny"), ov), tmp_path / "run", progress=False)
    again = SequenceModel.from_pretrained(tmp_path / "run")
    assert again.cfg.data.padding == "skip" and again.draws_lengths()  # the default: no data.padding given
    assert again.length_counts is not None and again.length_counts.tolist() == model.length_counts.tolist()
    c = again.length_counts
    # training records: tokens + <eos> = 3, 5, 8 (in some split): nothing else
    assert int(c.sum()) > 0 and set(torch.nonzero(c).flatten().tolist()) <= {3, 5, 8}


def test_a_given_eos_fixes_the_length_of_a_skip_models_window():
    """An infill layout (text <eos> <pad>..) sets the length itself: the backbone attends up to its <eos>."""
    from ddlm.sampling.lengths import KeyPadded

    model = _model()
    tok = model.tokenizer
    fixed = torch.full((1, L), tok.pad_id)
    fixed[0, :3] = torch.tensor([0, 1, 2])
    fixed[0, 6] = tok.eos_id  # 3..5 free (a span of 3)
    given = torch.ones(1, L, dtype=torch.bool)
    given[0, 3:6] = False
    f, m, net = model._length_given(model.backbone, 2, L, fixed, given, None, torch.Generator())
    assert isinstance(net, KeyPadded) and net.key_mask.sum(-1).tolist() == [7, 7]
    assert torch.equal(f, fixed.expand(2, -1)) and torch.equal(m, given.expand(2, -1))
    prompt_only = given & (torch.arange(L) < 3)  # no <eos> given and no max_length: a fixed-length sample
    assert model._length_given(model.backbone, 2, L, fixed, prompt_only, None, torch.Generator())[2] is model.backbone


def test_infill_pays_a_skip_models_length():
    from ddlm.infill import _length_cost

    model = _model()
    model.length_counts = torch.bincount(torch.tensor([5] * 9 + [8]), minlength=L + 1)
    cost = _length_cost(model, 3, [2, 5])  # records of 5 and 8 tokens
    assert cost.tolist() == pytest.approx([-math.log((9 + 1 / L) / 11), -math.log((1 + 1 / L) / 11)])
    assert _length_cost(_model("learn"), 3, [2, 5]).tolist() == [0.0, 0.0]


def test_a_records_model_saved_without_data_padding_loads_as_learn(tmp_path):
    """data.padding=skip became the default after records models were saved with learn: a saved config without
    the key is read as the default of its day, learn (and a new model keeps what it saved)."""
    import json

    model = _model("skip")
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    meta = json.loads(path.read_text())
    assert meta["config"]["data"]["padding"] == "skip"
    assert SequenceModel.from_pretrained(tmp_path / "m").cfg.data.padding == "skip"
    del meta["config"]["data"]["padding"]
    path.write_text(json.dumps(meta))
    old = SequenceModel.from_pretrained(tmp_path / "m")
    assert old.cfg.data.padding == "learn" and not old.draws_lengths()
