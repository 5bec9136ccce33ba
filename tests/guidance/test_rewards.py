"""The reward registry (guidance/rewards.py): RDKit's numbers for valid molecules, the floor for invalid ones."""

import pytest

from ddlm.errors import UserError
from ddlm.guidance.rewards import FLOOR, LOGP_RANGE, reward_names, resolve_reward

Chem = pytest.importorskip("rdkit.Chem")
from rdkit.Chem import QED, Crippen  # noqa: E402

MOLS = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CCCCCCCCCCCCCCCC"]
BAD = ["", "C1CC", "xyz", "c1cccc1"]  # empty, unclosed ring, not SMILES, a kekulisation failure


def test_qed_and_logp_are_rdkits_and_invalid_molecules_get_the_floor():
    qed, _ = resolve_reward("qed")
    logp, _ = resolve_reward("logp")
    mols = [Chem.MolFromSmiles(s) for s in MOLS]
    assert qed(MOLS + BAD) == [QED.qed(m) for m in mols] + [FLOOR["qed"]] * len(BAD)
    assert logp(MOLS + BAD) == [Crippen.MolLogP(m) for m in mols] + [FLOOR["logp"]] * len(BAD)


def test_logp_range_sa_and_valid():
    rng, _ = resolve_reward("logp_range")
    lo, hi = LOGP_RANGE
    for s, v in zip(MOLS, rng(MOLS)):
        x = Crippen.MolLogP(Chem.MolFromSmiles(s))
        assert v == (0.0 if lo <= x <= hi else -min(abs(x - lo), abs(x - hi)))
    sa, _ = resolve_reward("sa")
    scores = sa(MOLS + BAD)
    assert all(0.0 < s <= 1.0 for s in scores[:4]) and scores[4:] == [0.0] * 4
    import importlib.util
    import os

    from rdkit import RDConfig

    path = os.path.join(RDConfig.RDContribDir, "SA_Score", "sascorer.py")
    spec = importlib.util.spec_from_file_location("sascorer_for_test", path)
    sascorer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sascorer)
    assert scores[:4] == [(10 - sascorer.calculateScore(Chem.MolFromSmiles(s))) / 9 for s in MOLS]
    valid, _ = resolve_reward("valid")
    assert valid(MOLS + BAD) == [1.0] * 4 + [0.0] * 4


def test_rewards_by_name_module_function_or_callable():
    assert set(reward_names()) == {"qed", "logp", "logp_range", "sa", "valid"}
    fn, name = resolve_reward("math:fsum")
    assert name == "math:fsum" and fn([1.0, 2.0]) == 3.0
    fn, name = resolve_reward(len)
    assert fn is len and name == "len"
    for bad, msg in [("qde", "unknown reward 'qde'"), ("nosuchmodule_x:f", "cannot load the reward"),
                     ("math:pi", "not callable"), (3, "reward must be")]:
        with pytest.raises(UserError, match=msg):
            resolve_reward(bad)
