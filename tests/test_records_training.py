"""Records in training and evaluation: padding never changes the loss of the real tokens (every family), the
AR row starts with BOS and predicts <eos>, data.padding decides the masks, long records are skipped/cut and
logged once, `ddlm train --records lines` then `ddlm eval` end to end, one-line refusals."""

import json
import math
from pathlib import Path

import pytest
import torch

from cli_harness import run_cli
from ddlm.config import apply_overrides, load_preset
from ddlm.data.batches import Batch, as_batch
from ddlm.data.record_data import record_source
from ddlm.data.tokenizers import CharTokenizer
from ddlm.eval.records import length_prior
from ddlm.pipeline import SequenceModel

FIXTURE = Path(__file__).parent / "data" / "fixtures" / "lines.txt"


def tiny(*overrides):
    return apply_overrides(load_preset("tiny"), ["train.threads=1", *overrides])


def _model(family: str):
    from ddlm.families import configure

    overrides = [f"process.name={family}", "model.max_len=16", "process.steps=20"]
    cfg = configure(tiny(*overrides), overrides)
    torch.manual_seed(0)
    return SequenceModel(cfg, CharTokenizer("abcdefgh", specials=True)).eval()


@pytest.mark.parametrize("family", ["mdlm", "ar", "rdm-absorbing", "rdm-multinomial", "d3pm-absorbing",
                                    "d3pm-uniform"])
def test_padding_never_changes_the_loss_of_the_real_tokens(family):
    model = _model(family)
    tok = model.tokenizer
    record = torch.tensor([[0, 3, 5, 1, 7, 2, tok.eos_id]])  # (1, 7): a record and its <eos>
    padded = torch.cat([record, torch.full((1, 9), tok.pad_id)], dim=1)  # (1, 16)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[:, :7] = True
    t = torch.tensor([0.55])
    objective = model.family.objective
    with torch.no_grad():
        # key-padding mask = loss mask: the padding is neither scored nor seen (data.padding=skip; AR always)
        with_pad = objective.bound(model.backbone, Batch(padded, mask), t, torch.Generator().manual_seed(3))
        junk = torch.where(mask, padded, torch.randint(0, tok.vocab_size, (1, 16), generator=torch.Generator()))
        with_junk = objective.bound(model.backbone, Batch(junk, mask), t, torch.Generator().manual_seed(3))
        alone = objective.bound(model.backbone, record, t, torch.Generator().manual_seed(3))
    assert torch.isfinite(with_pad).all() and float(with_pad) > 0
    torch.testing.assert_close(with_junk, with_pad, rtol=0, atol=1e-6)  # what fills the padding never leaks
    if family not in ("d3pm-uniform", "rdm-multinomial"):  # uniform noise: its draws of noise tokens follow
        # the draws of (B, L) noise positions, so they match the record alone's only at one row length
        torch.testing.assert_close(with_pad, alone, rtol=0, atol=1e-5)


def _source(*overrides):
    return record_source(tiny(f"data.source={FIXTURE}", "data.records=lines", *overrides))


def test_ar_rows_start_with_bos_and_the_last_real_token_predicts_eos():
    from ddlm.families import build_family

    cfg = tiny(f"data.source={FIXTURE}", "data.records=lines", "process.name=ar")
    tokenizer, batches, val = record_source(cfg)
    b = as_batch(batches.batch(0))  # AR: the loss skips <pad> whatever data.padding says
    assert b.mask is not None
    process = build_family(cfg.process, tokenizer.vocab_size).process
    inputs = process.shift(b.tokens)  # (B, L): what the network reads
    assert (inputs[:, 0] == process.bos_id).all()  # BOS in front: r_1 is predicted from it
    assert tokenizer.bos_id not in b.tokens.tolist()[0]  # and no second BOS of the tokenizer's
    lines = set(FIXTURE.read_text().splitlines())
    for row, m, inp in zip(b.tokens, b.mask, inputs):
        n = int(m.sum()) - 1  # record tokens; its <eos> follows
        assert row[n] == tokenizer.eos_id and m[: n + 1].all() and not m[n + 1:].any()
        assert inp[n] == row[n - 1] != tokenizer.eos_id  # the target of the last real token is <eos>
        assert (row[n + 1:] == tokenizer.pad_id).all()
        assert tokenizer.decode(row.tolist()) in lines


def test_padding_learn_counts_every_position_and_skip_only_the_record_and_eos():
    tok, learn, val_learn = _source("data.padding=learn")
    assert isinstance(learn.batch(0), torch.Tensor)  # every position counts: the stream's code path
    assert isinstance(val_learn, torch.Tensor)
    _, skip, val_skip = _source("data.padding=skip")
    b = skip.batch(0)
    assert torch.equal(b.tokens, learn.batch(0))  # the same rows in the same order
    assert torch.equal(b.mask, b.tokens != tok.pad_id) and torch.equal(b.key_mask, b.mask)
    assert isinstance(val_skip, Batch) and torch.equal(val_skip.tokens, val_learn)


@pytest.mark.parametrize("overrides, noted", [(["data.padding=learn"], True),
                                               (["data.padding=learn", "model.positions=rotary+learned"], False),
                                               (["data.padding=learn", "model.positions=learned"], False),
                                               (["data.padding=skip"], False),
                                               (["data.padding=learn", "process.name=ar"], False)])
def test_a_position_blind_learn_model_is_noted_once_at_training(overrides, noted):
    from ddlm.data.record_data import POSITION_BLIND

    _, batches, _ = _source(*overrides)
    assert (POSITION_BLIND in batches.report_lines) == noted


def test_long_records_are_skipped_or_cut_counted_and_logged_once(tmp_path):
    from ddlm.train.loop import Trainer

    data = tmp_path / "long.txt"
    lines = [f"line {i}" for i in range(38)] + ["x" * 40, "y" * 50]  # two longer than a block of 32
    data.write_text("\n".join(lines) + "\n")
    logged = []
    cfg = tiny(f"data.source={data}", "data.records=lines", "train.max_steps=1", "train.ckpt_every=0")
    Trainer(cfg, tmp_path / "run", log=logged.append, progress=False).run()
    mentions = [line for line in logged if "longer records" in line]
    # 40 records: 38 train / 2 validation; the two long ones (i = 38, 39) go to training and validation
    assert mentions == ["training records: 38 in 37 rows of up to 31 tokens, longest 40 tokens; "
                        "1 longer records skipped",
                        "validation records: 2 in 1 rows of up to 31 tokens, longest 50 tokens; "
                        "1 longer records skipped"]
    assert logged.index(mentions[0]) == 1  # right after the start-of-run line
    tok, batches, _ = record_source(apply_overrides(cfg, ["data.long_records=cut"]))
    rows = batches.blocks  # (38, 32): the long training record is kept, cut to a block, without <eos>
    ended = (rows == tok.eos_id).any(-1)
    assert len(rows) == 38 and int((~ended).sum()) == 1 and tok.decode(rows[~ended][0].tolist()) == "x" * 32
    assert batches.report_lines[0].endswith("1 longer records cut (kept without <eos>)")


def test_length_prior_is_the_smoothed_training_lengths():
    nats = length_prior(torch.tensor([2, 2, 3]), 4)  # lengths 1..4: counts 0, 2, 1, 0, plus 1/4 each
    expected = [math.inf, -math.log(0.25 / 4), -math.log(2.25 / 4), -math.log(1.25 / 4), -math.log(0.25 / 4)]
    assert nats.tolist() == pytest.approx(expected)


def test_train_records_lines_then_eval_prints_bpc_per_record(tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(["train", "--preset", "tiny", "--data", str(FIXTURE), "--records", "lines",
                                    "--out", str(out), "--max-steps", "3", "--quiet", "train.threads=1",
                                    "data.padding=learn"])
    assert code == 0, stderr
    model = SequenceModel.from_pretrained(out)
    assert model.tokenizer.eos_id is not None and model.cfg.data.records == "lines"
    code, stdout, stderr = run_cli(["eval", str(out), "--json", "--t-samples", "2"])
    assert code == 0, stderr
    m = json.loads(stdout)
    # 48 lines, every 20th to validation: lines 20 (32 characters: longer than the 31 of a block, skipped) and 40
    held_out = FIXTURE.read_text().splitlines()[39]
    assert m["report"]["n_skipped"] == 1 and m["n_records"] == 1 and m["n_chars"] == len(held_out) == 19
    assert m["n_tokens"] == 32  # data.padding=learn: every position of the row is scored
    assert m["bpc"] == pytest.approx(m["nll"] * m["n_tokens"] / math.log(2) / m["n_chars"])
    assert m["bpc_ci95"] == pytest.approx(m["ci95"] * m["n_tokens"] / math.log(2) / m["n_chars"])
    code, stdout, stderr = run_cli(["eval", str(out), "--t-samples", "2"])
    assert code == 0 and f"{m['bpc']:.4f} ± {m['bpc_ci95']:.4f} (95%) bits per character" in stdout
    assert "(1 record, 19 characters; NELBO bound, 2 t-samples)" in stdout
    assert stderr == "validation records: 2 in 1 rows of up to 31 tokens, longest 32 tokens; 1 longer records skipped\n"


@pytest.mark.parametrize("argv, message", [
    (["--data", "kjv", "--records", "stanzas"], "the kjv source has no records of kind 'stanzas'; it has: verses"),
    (["--data", "EMPTY", "--records", "lines"], "empty"),
    (["--data", "BLANK", "--records", "lines"], ""),
    (["--data", str(FIXTURE), "--records", "verses"], "a file's records are its lines"),
    (["--data", str(FIXTURE), "--records", "lines", "data.padding=some"], "unknown data.padding 'some'"),
])
def test_bad_records_input_is_one_line(tmp_path, argv, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n  \n\t\n")
    argv = [{"EMPTY": str(tmp_path / "empty.txt"), "BLANK": str(tmp_path / "blank.txt")}.get(a, a) for a in argv]
    code, stdout, stderr = run_cli(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--quiet",
                                    *argv])
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("ddlm train: error: ")
    assert message in stderr


def test_only_a_skip_model_pays_for_its_length_in_the_bound():
    from ddlm.data.record_data import prepare_record_data
    from ddlm.eval.records import evaluate_records, length_nats_for

    models = {}
    variants = (("learn", ["data.padding=learn"]), ("skip", ["data.padding=skip"]),
                ("ar", ["process.name=ar", "data.padding=skip"]))
    for name, extra in variants:
        cfg = tiny(f"data.source={FIXTURE}", "data.records=lines", *extra)
        tok, (train_tokens, train_mask), _, _ = prepare_record_data(cfg)
        models[name] = SequenceModel(cfg, tok).eval()
    assert length_nats_for(models["learn"]) is None and length_nats_for(models["ar"]) is None
    prior = length_nats_for(models["skip"])  # the 45 training lines that fit: their lengths with <eos>
    torch.testing.assert_close(prior, length_prior(train_mask.sum(-1), 32))
    _, _, val = _source("data.padding=skip")
    real = val.mask
    given = evaluate_records(models["skip"], val, real, t_samples=2)
    paid = evaluate_records(models["skip"], val, real, t_samples=2, length_nats=prior)
    n = int(real.sum()) - 1  # the one held-out line that fits: 19 characters and its <eos>
    assert given["length_bpc"] == 0 and paid["length_bpc"] == pytest.approx(float(prior[n + 1]) / math.log(2) / 19)
    assert paid["bpc"] == pytest.approx(given["bpc"] + paid["length_bpc"])


@pytest.mark.slow  # ~12 s on a busy 2-core machine: three short training runs
def test_a_resumed_records_run_equals_an_uninterrupted_one(tmp_path):
    from ddlm.train.loop import Trainer

    cfg = tiny(f"data.source={FIXTURE}", "data.records=lines", "data.padding=skip", "train.max_steps=4",
               "train.ckpt_every=2", "model.n_layers=1")
    straight = Trainer(cfg, tmp_path / "a", log=lambda *_: None, progress=False).run()
    # stopped after 2 steps (the tiny preset warms up for 5 steps, so the learning rate of steps 0-3 does not
    # depend on max_steps), then resumed to 4
    Trainer(apply_overrides(cfg, ["train.max_steps=2"]), tmp_path / "b", log=lambda *_: None, progress=False).run()
    resumed = Trainer.resume(tmp_path / "b", max_steps=4, log=lambda *_: None, progress=False).run()
    for (name, a), b in zip(straight.backbone.state_dict().items(), resumed.backbone.state_dict().values()):
        assert torch.equal(a, b), name  # record batches depend only on (seed, step), the tokenizer is reloaded
    assert resumed.tokenizer.eos_id is not None
