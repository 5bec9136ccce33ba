"""Labels: dropout to the null label in training batches, the Conditioned backbone, label checks."""

import pytest
import torch

from ddlm.data.batches import Batch
from ddlm.errors import UserError
from ddlm.guidance.conditions import (NULL_LABEL, Conditioned, check_dropout, check_labels, drop_labels,
                                      dropout_generator)


def test_label_dropout_drops_exactly_the_rows_its_seeded_uniforms_say():
    B, p = 10_000, 0.1
    cond = torch.arange(B) % 7
    batch = Batch(torch.zeros(B, 4, dtype=torch.long), cond=cond)
    out = drop_labels(batch, p, dropout_generator(3, 11))
    u = torch.rand(B, generator=dropout_generator(3, 11), dtype=torch.float64)
    dropped = out.cond == NULL_LABEL
    assert torch.equal(dropped, u < p)  # exactly the rows whose uniform is below p
    assert int(dropped.sum()) == int((u < p).sum()) == 964  # this seed's count, within Binomial(10000, 0.1): 1000 +- 4 sd (120)
    assert abs(int(dropped.sum()) - B * p) < 4 * (B * p * (1 - p)) ** 0.5
    assert torch.equal(out.cond[~dropped], cond[~dropped])  # the others keep their label
    again = drop_labels(batch, p, dropout_generator(3, 11)).cond
    assert torch.equal(again, out.cond)  # (seed, step, rank) decide: a resume drops the same rows
    assert not torch.equal(drop_labels(batch, p, dropout_generator(3, 12)).cond, out.cond)
    assert drop_labels(batch, 0.0, dropout_generator(3, 11)) is batch
    assert (drop_labels(batch, 1.0, dropout_generator(3, 11)).cond == NULL_LABEL).all()
    plain = Batch(torch.zeros(2, 4, dtype=torch.long))
    assert drop_labels(plain, 0.5) is plain  # no labels: nothing to drop


@pytest.mark.parametrize("p", [-0.1, 1.5, True, "0.1"])
def test_a_bad_dropout_rate_is_a_one_line_error(p):
    with pytest.raises(UserError, match="cond_dropout"):
        check_dropout(p)


def test_the_training_loop_drops_labels_at_the_configured_rate(tmp_path):
    """A labelled batch source and train.cond_dropout = 0.5: the objective sees each step's labels with exactly
    the rows of dropout_generator(seed, step, rank) replaced by the null label."""
    from ddlm.config import apply_overrides, load_preset
    from ddlm.train.loop import Trainer

    cfg = apply_overrides(load_preset("tiny"), ["train.max_steps=2", "model.max_len=16", "train.threads=1",
                                                "train.batch_size=32", "train.eval_every=0", "train.ckpt_every=0",
                                                "train.log_every=1", "model.n_classes=3", "train.cond_dropout=0.5"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    source = trainer.batches

    class Labelled:
        def batch(self, step, rank=0, world=1):
            x = source.batch(step, rank, world)
            return Batch(x, cond=torch.arange(len(x)) % 3)

    trainer.batches = Labelled()
    objective, seen = trainer.model.family.objective, []

    def spy(model, batch, generator):
        seen.append(batch.cond.clone())
        return objective(model, batch, generator)

    trainer.model.family.objective = spy
    trainer.run()
    assert len(seen) == 2
    for step, cond in enumerate(seen):
        u = torch.rand(32, generator=dropout_generator(cfg.train.seed, step, 0), dtype=torch.float64)
        assert torch.equal(cond == NULL_LABEL, u < 0.5)
        assert torch.equal(cond[u >= 0.5], (torch.arange(32) % 3)[u >= 0.5])


def test_conditioned_backbone_feeds_the_labels_of_the_selected_rows():
    seen = []

    def net(x, t=None, cond=None):
        seen.append(cond)
        return x

    wrapped = Conditioned(net, torch.tensor([5, 6, 7]))
    wrapped(torch.zeros(3, 2))
    wrapped.select_rows(torch.tensor([2, 0]))
    wrapped(torch.zeros(2, 2))
    wrapped(torch.zeros(3, 2))  # the selection holds for one call
    assert [c.tolist() for c in seen] == [[5, 6, 7], [7, 5], [5, 6, 7]]


def test_label_checks():
    assert check_labels(2, 3, 4).tolist() == [2, 2, 2]
    assert check_labels([0, -1, 3], 3, 4).tolist() == [0, -1, 3]
    for bad, msg in [(4, "out of range"), ([0, 1], "2 labels but n is 3"), (1.5, "whole-number"),
                     ([[0]], "whole-number")]:
        with pytest.raises(UserError, match=msg):
            check_labels(bad, 3, 4)
    with pytest.raises(UserError, match="unconditional"):
        check_labels(0, 3, 0)
