"""A learned, differentiable reward for DRAKES (guidance/drakes.py): RDKit's QED (or any reward on decoded texts)
is not differentiable, so a small network is fitted to its values on the model's own training records, as
DRAKES (Wang et al. 2025, arXiv 2410.13643) fits its activity oracles before fine-tuning.

The surrogate reads one-hot rows x (n, L, V) over the model's V tokens (MASK excluded), exactly the rows the
fine-tuning trajectory ends in:

    h_0 = x @ E + P                                   (n, L, d)  token embedding as a matmul, learned positions
    h_k = h_{k-1} + GELU(conv1d_k(h_{k-1}))            (n, L, d)  width-`kernel` convolutions, residual
    r(x) = lo + (hi - lo) * sigmoid(MLP([mean_l h_K, max_l h_K]))  (n,)  bounded by the labels' range

Bounding r by the smallest and largest training label keeps fine-tuning from chasing values the surrogate
never saw. Training rows: a seeded random subset of the model's training records, encoded with its tokenizer
and packed as training packs them (record, <eos>, <pad>...); a share of them gets a few random token
substitutions so that the surrogate also sees off-distribution rows (often invalid molecules, reward floor).
Labels: the reward of each row's decoded text (SMILES for a SELFIES model). Saved as surrogate.safetensors and
surrogate.json (architecture, label range, the tokens it reads, its held-out fit).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError

WEIGHTS, META = "surrogate.safetensors", "surrogate.json"
FORMAT = 1


class RewardModel(torch.nn.Module):
    """r(x) for one-hot rows x (n, L, V): embedding matmul + residual 1-D convolutions + mean- and max-pool MLP, output
    squashed into [lo, hi] (the training labels' range; module docstring)."""

    def __init__(self, vocab_size: int, length: int, d_model: int = 64, n_layers: int = 2, kernel: int = 5,
                 lo: float = 0.0, hi: float = 1.0):
        super().__init__()
        self.arch = {"vocab_size": vocab_size, "length": length, "d_model": d_model, "n_layers": n_layers,
                     "kernel": kernel}
        self.embed = torch.nn.Parameter(torch.randn(vocab_size, d_model) / math.sqrt(d_model))
        self.pos = torch.nn.Parameter(torch.zeros(length, d_model))
        self.convs = torch.nn.ModuleList(torch.nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2)
                                         for _ in range(n_layers))
        self.head = torch.nn.Sequential(torch.nn.Linear(2 * d_model, d_model), torch.nn.GELU(),
                                        torch.nn.Linear(d_model, 1))
        self.register_buffer("range", torch.tensor([float(lo), float(hi)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():  # token ids (n, L)
            x = F.one_hot(x, self.arch["vocab_size"]).float()
        h = x @ self.embed + self.pos[: x.shape[1]]  # (n, L, d)
        h = h.transpose(1, 2)  # (n, d, L) for conv1d
        for conv in self.convs:
            h = h + F.gelu(conv(h))
        z = self.head(torch.cat([h.mean(-1), h.amax(-1)], -1)).squeeze(-1)  # (n,) from mean and max over L
        lo, hi = self.range[0], self.range[1]
        return lo + (hi - lo) * torch.sigmoid(z)


def fit(rows: torch.Tensor, labels: torch.Tensor, vocab_size: int, *, epochs: int = 10, batch_size: int = 256,
        lr: float = 1e-2, held_out: float = 0.1, seed: int = 0, log=None, **arch) -> tuple[RewardModel, dict]:
    """A RewardModel fitted by MSE to `labels` (N,) of token rows `rows` (N, L), the last `held_out` share kept
    aside: (model in eval mode with frozen weights, its held-out fit {mae, pearson, mae_of_mean, n_train,
    n_test, seconds})."""
    start = time.perf_counter()
    labels = labels.float()
    n_test = max(1, int(len(rows) * held_out))
    if len(rows) - n_test < 2:
        raise UserError(f"the surrogate needs at least 3 labelled rows, got {len(rows)}")
    tr_x, te_x, tr_y, te_y = rows[:-n_test], rows[-n_test:], labels[:-n_test], labels[-n_test:]
    torch.manual_seed(seed)
    model = RewardModel(vocab_size, rows.shape[1], lo=float(labels.min()), hi=float(labels.max()), **arch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(tr_x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order, total = torch.randperm(len(tr_x), generator=g), 0.0
        for i in range(0, len(tr_x), batch_size):
            idx = order[i: i + batch_size]
            loss = F.mse_loss(model(tr_x[idx]), tr_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        fit_ = evaluate(model, te_x, te_y)
        if log is not None:
            log(f"surrogate epoch {epoch + 1}/{epochs}: train MSE {total / len(tr_x):.5f}, held-out MAE "
                f"{fit_['mae']:.4f}, Pearson r {fit_['pearson']:.3f}")
    model.eval().requires_grad_(False)
    fit_ = evaluate(model, te_x, te_y)
    fit_.update(mae_of_mean=round(float((te_y - tr_y.mean()).abs().mean()), 4), n_train=len(tr_x), n_test=n_test,
                seconds=round(time.perf_counter() - start, 1))
    return model, fit_


@torch.no_grad()
def evaluate(model: RewardModel, rows: torch.Tensor, labels: torch.Tensor) -> dict:
    """Held-out fit: mean absolute error and Pearson correlation of the predictions with `labels`."""
    pred = torch.cat([model(rows[i: i + 1024]) for i in range(0, len(rows), 1024)])
    a, b = pred - pred.mean(), labels - labels.mean()
    r = float((a * b).sum() / (a.norm() * b.norm())) if a.norm() > 0 and b.norm() > 0 else float("nan")
    return {"mae": round(float((pred - labels).abs().mean()), 4), "pearson": round(r, 4)}


# ---- the model's records, labelled by a reward on their decoded texts ---------------------------------------
def token_fingerprint(tokenizer, vocab_size: int) -> list[str]:
    """What each of the V ids decodes to: a surrogate reads only models whose ids mean the same."""
    return [tokenizer.decode([i]) for i in range(vocab_size)]


def decoded(model, rows: torch.Tensor) -> list[str]:
    """The texts a reward scores of token rows (N, L): a molecule model's SMILES (SELFIES decoded, cut at <eos>
    or <pad>), else the text up to the first <eos>."""
    if model.cfg.data.source == "moses":
        from ..tasks.molecules.score import sampled_smiles

        return sampled_smiles(model, rows)
    from .steer import texts_of

    return texts_of(model, rows)


def training_rows(model, n: int, *, seed: int = 0, corrupt: float = 0.25, max_subs: int = 3) -> torch.Tensor:
    """n rows (n, L) of the model's training records, packed as training packs them (seeded random subset);
    a share `corrupt` of them with 1..max_subs positions set to uniform random tokens."""
    from ..data.record_data import uses_records
    from ..data.records import encode_records, load_records, pack_flat

    cfg, tok = model.cfg, model.tokenizer
    if not uses_records(cfg.data) or getattr(tok, "eos_id", None) is None:
        raise UserError("the surrogate is trained on the model's training records, but this model was trained on "
                        "a stream (data.records=none); fine-tune a model trained on records (e.g. --preset "
                        "molecules) or give a trained surrogate with --surrogate PATH")
    records = load_records(cfg.data.source, cfg.data.records)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(records), generator=g)[: min(n, len(records))].tolist()
    flat, lengths = encode_records(tok, [records[i] for i in pick])
    rows, _, _ = pack_flat(flat, lengths, cfg.model.max_len, None, tok.eos_id, tok.pad_id, "skip")  # (N, L)
    V = model.process.vocab_size
    bad = torch.rand(len(rows), generator=g) < corrupt  # (N,)
    k = torch.randint(1, max_subs + 1, (len(rows),), generator=g)  # substitutions per corrupted row
    for i in bad.nonzero().flatten().tolist():
        where = torch.randperm(rows.shape[1], generator=g)[: int(k[i])]
        rows[i, where] = torch.randint(0, V, (len(where),), generator=g)
    return rows


def train_surrogate(model, reward, *, n: int = 20_000, epochs: int = 10, seed: int = 0, log=None, **kw):
    """(RewardModel, its metadata) fitted to reward(decoded rows) on n of the model's training rows.
    reward: a name, module:function or callable on texts (guidance/rewards.py)."""
    from .rewards import resolve_reward

    fn, name = resolve_reward(reward)
    start = time.perf_counter()
    rows = training_rows(model, n, seed=seed)
    labels = torch.tensor([float(v) for v in fn(decoded(model, rows))])  # (N,)
    if log is not None:
        log(f"surrogate: {len(rows):,} training rows of {model.cfg.data.source}/{model.cfg.data.records} labelled "
            f"by {name} in {time.perf_counter() - start:.1f} s (mean {float(labels.mean()):.3f})")
    net, fit_ = fit(rows, labels, model.process.vocab_size, epochs=epochs, seed=seed, log=log, **kw)
    meta = {"reward": name, "fit": fit_, "tokens": token_fingerprint(model.tokenizer, model.process.vocab_size),
            "records": f"{model.cfg.data.source}/{model.cfg.data.records}"}
    return net, meta


def save(directory, net: RewardModel, meta: dict) -> None:
    """surrogate.safetensors + surrogate.json in `directory` (written atomically)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (WEIGHTS + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))
    os.replace(tmp, directory / WEIGHTS)
    info = {"ddlm_surrogate": FORMAT, "arch": net.arch, **meta}
    tmp = directory / (META + ".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, directory / META)


def load(directory, model=None) -> tuple[RewardModel, dict]:
    """(frozen RewardModel, metadata) from `directory` (or a fine-tuned model folder holding surrogate/); with
    `model`, refused unless the surrogate reads the same tokens at the same length."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / META).is_file() and (directory / "surrogate" / META).is_file():
        directory = directory / "surrogate"
    if not (directory / META).is_file() or not (directory / WEIGHTS).is_file():
        raise UserError(f"{directory} holds no surrogate ({META} and {WEIGHTS}); give the folder `ddlm finetune` "
                        "wrote, or leave out --surrogate to train one")
    try:
        info = json.loads((directory / META).read_text())
        net = RewardModel(**info["arch"])
        net.load_state_dict(load_file(str(directory / WEIGHTS)))
    except Exception as e:  # damaged JSON or weights, another format
        raise UserError(f"the surrogate in {directory} cannot be read ({type(e).__name__}: {e})") from None
    if model is not None:
        same = info.get("tokens") == token_fingerprint(model.tokenizer, model.process.vocab_size)
        if not same or info["arch"]["length"] < model.cfg.model.max_len:
            raise UserError(f"the surrogate in {directory} was trained for another tokenizer or a shorter context "
                            f"({info.get('records')}); train one for this model (leave out --surrogate)")
    return net.eval().requires_grad_(False), info
