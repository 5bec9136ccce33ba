"""Steering a SELFIES molecules model: its rewards see SMILES, not SELFIES strings (which RDKit would read as other molecules)."""

import pytest
import torch

from ddlm import SequenceModel, apply_overrides, load_preset

pytest.importorskip("selfies")
pytest.importorskip("rdkit")


def test_a_selfies_models_rows_reach_the_reward_as_smiles():
    from ddlm.guidance.rewards import resolve_reward
    from ddlm.guidance.steer import texts_of
    from ddlm.tasks.molecules.tokenizer import SmilesTokenizer

    selfies = "[C][C][O]"  # ethanol
    tok = SmilesTokenizer.from_text(selfies, specials=True)
    ov = ["data.source=moses", "data.records=selfies-5k", "model.max_len=8"]
    model = SequenceModel(apply_overrides(load_preset("molecules-tiny"), ov), tok)
    row = torch.tensor([tok.encode(selfies) + [tok.eos_id] + [tok.pad_id] * (8 - 4)])  # (1, 8)
    assert texts_of(model, row) == ["CCO"]
    qed, _ = resolve_reward("qed")
    # RDKit reads the SELFIES string itself as SMILES of bracket atoms (radicals): another molecule, another score
    assert qed(texts_of(model, row))[0] == pytest.approx(qed(["CCO"])[0]) != pytest.approx(qed([selfies])[0])
