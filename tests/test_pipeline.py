"""The model object end to end: training lowers the loss, save/load round trips bit-exactly, sampling
honours prompts, fixed positions, lengths beyond the context, and seeds."""

import csv

import pytest
import torch

import ddlm
from ddlm import SequenceModel


@pytest.mark.parametrize("family, column, batch, drop", [
    ("ar", "loss", 8, 1.0),  # exact NLL per token
    ("mdlm", "masked_ce", 16, 0.8),  # cross-entropy on masked tokens (the NELBO itself is noisier)
])
def test_tiny_model_loss_falls(tmp_path, family, column, batch, drop):
    cfg = ddlm.apply_overrides(ddlm.load_preset("tiny"), [
        "train.max_steps=60", "model.max_len=32", "train.lr=3e-3", "train.log_every=1", "train.eval_every=0",
        "train.ckpt_every=0", f"process.name={family}", f"train.batch_size={batch}"])
    ddlm.fit(cfg, tmp_path / "run", progress=False)
    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "log.csv")) if r["split"] == "train"]
    values = [float(r[column]) for r in rows]
    assert values[0] > 3.8  # about log(65) = 4.17 at initialisation
    assert sum(values[-5:]) / 5 < values[0] - drop, values


def test_save_load_round_trip_is_bit_exact(tiny_run, tmp_path):
    _, model = tiny_run
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    loaded = SequenceModel.from_pretrained(tmp_path / "m")
    a, b = model.backbone.state_dict(), loaded.backbone.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.cfg == model.cfg
    assert loaded.tokenizer.encode("In the beginning") == model.tokenizer.encode("In the beginning")
    x = torch.randint(0, model.tokenizer.vocab_size, (2, 16))
    assert torch.equal(model.backbone.eval()(x), loaded.backbone(x))
    s1 = model.generate(n=2, length=16, steps=8, seed=3)
    s2 = loaded.generate(n=2, length=16, steps=8, seed=3)
    assert s1.texts == s2.texts


def test_run_directory_loads_like_a_model_directory(tiny_run):
    out, model = tiny_run
    loaded = SequenceModel.from_pretrained(out)
    assert all(torch.equal(v, loaded.backbone.state_dict()[k]) for k, v in model.backbone.state_dict().items())


def test_prompt_infill_blocks_and_seeds(tiny_run):
    _, model = tiny_run
    out = model.generate(n=3, length=16, steps=16, prompt="And God", seed=1)
    assert all(t.startswith("And God") for t in out.texts) and all(len(t) == 16 for t in out.texts)
    fixed = torch.zeros(16, dtype=torch.long)
    mask = torch.zeros(16, dtype=torch.bool)
    ids = model.encode("Lord")
    fixed[6:10], mask[6:10] = ids, True
    out = model.generate(n=2, length=16, steps=16, fixed=fixed, fixed_mask=mask, seed=1)
    assert all(t[6:10] == "Lord" for t in out.texts)
    long = model.generate(n=2, length=40, steps=8, prompt="The", seed=2)  # context is 16: sliding blocks
    assert long.tokens.shape == (2, 40) and all(t.startswith("The") for t in long.texts)
    assert not (long.tokens == model.process.mask_id).any()
    assert long.nfe > 8  # several windows
    again = model.generate(n=2, length=40, steps=8, prompt="The", seed=2)
    other = model.generate(n=2, length=40, steps=8, prompt="The", seed=3)
    assert again.texts == long.texts and other.texts != long.texts


def test_cached_sampler_matches_ancestral_on_a_trained_model(tiny_run):
    _, model = tiny_run
    a = model.generate(n=4, length=16, steps=64, sampler="ancestral", seed=5)
    b = model.generate(n=4, length=16, steps=64, sampler="cached", seed=5)
    assert a.texts == b.texts
    assert b.nfe < a.nfe and b.row_evals < a.row_evals


def test_prompt_errors(tiny_run):
    _, model = tiny_run
    with pytest.raises(ddlm.UserError, match="prompt has 20 tokens but the length is 16"):
        model.generate(length=16, prompt="x" * 20)
    with pytest.raises(ddlm.UserError, match="not in the vocabulary"):
        model.generate(length=16, prompt="€")


def test_evaluation_encodes_only_the_validation_text(tiny_run, monkeypatch):
    """ddlm.evaluate / ddlm eval read the validation blocks that training saw, without encoding the training text."""
    from ddlm.data import packing
    from ddlm.train.loop import prepare_data, validation_blocks

    _, model = tiny_run
    _, _, expected = prepare_data(model.cfg, model.tokenizer)
    encoded = []
    real = packing.encode_corpus
    monkeypatch.setattr(packing, "encode_corpus", lambda tok, text: encoded.append(len(text)) or real(tok, text))
    val = validation_blocks(model.cfg, model.tokenizer)
    assert torch.equal(val, expected) and len(encoded) == 1  # one text encoded: the validation part
    m = ddlm.evaluate(model, max_blocks=2)
    assert m["n_tokens"] == 2 * model.cfg.model.max_len and len(encoded) == 2


@pytest.mark.parametrize("family, overrides", [
    ("d3pm-nn", []),  # the mutual-information schedule: a bisection over (T, V, V) matrix exponentials
    ("d3pm-gaussian", ["process.discrete_schedule=mutual_information"]),
    ("d3pm-uniform", []),
])
def test_d3pm_model_loads_without_solving_its_schedule(tiny_run, tmp_path, monkeypatch, family, overrides):
    """A saved D3PM model carries its betas: loading never calls a schedule builder, and the loaded process
    (betas and matrices) is the one that was saved."""
    from ddlm import families
    from ddlm.processes import d3pm, d3pm_schedules

    _, mdlm = tiny_run
    cfg = ddlm.apply_overrides(mdlm.cfg, [f"process.name={family}", "model.time_conditioning=true",
                                          "process.steps=20", *overrides])
    fresh = SequenceModel(cfg, mdlm.tokenizer)
    fresh.save_pretrained(tmp_path / "m")
    for clear in ("_built_d3pm_process", "_d3pm_process"):  # the in-process cache of built processes
        cached = getattr(families, clear, None)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()
    monkeypatch.setattr(d3pm, "KNOWN_BETAS", {})

    def expensive(*a, **k):
        raise AssertionError("loading solved the schedule again")
    for name in list(d3pm_schedules.D3PM_SCHEDULES):
        monkeypatch.setitem(d3pm_schedules.D3PM_SCHEDULES, name, expensive)
    loaded = SequenceModel.from_pretrained(tmp_path / "m")
    a, b = fresh.process, loaded.process
    assert a is not b and torch.equal(a.betas, b.betas)
    for name in ("abar", "Q", "Qbar"):
        if hasattr(a, name):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}


def test_saved_betas_go_only_to_the_process_they_were_solved_for():
    from ddlm.processes.d3pm import NearestNeighbourD3PM, UniformD3PM

    line = torch.arange(8, dtype=torch.float64)[:, None]
    a = NearestNeighbourD3PM(8, 4, embedding=line).schedule_key()
    assert a == NearestNeighbourD3PM(8, 4, embedding=line.clone()).schedule_key()
    assert a != NearestNeighbourD3PM(8, 4, embedding=line ** 2).schedule_key()  # another graph
    assert a != NearestNeighbourD3PM(8, 5, embedding=line).schedule_key()
    assert UniformD3PM(8, 4).schedule_key() != UniformD3PM(8, 4, schedule="linear").schedule_key()
