"""Several processes (DDP on gloo, 2 ranks on CPU): the ranks stay identical, two ranks equal one process with the
same global batch, and a 2-rank run resumed through the CLI ends exactly where an uninterrupted one does."""

from __future__ import annotations

import io
import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ddlm.config import apply_overrides, load_preset
from ddlm.errors import UserError
from ddlm.train import distributed
from ddlm.train.checkpoint import list_checkpoints, verify

# AR: no noise in the objective, so two ranks and one process compute the same gradient (dropout is 0 in tiny)
BASE = ["model.max_len=16", "train.batch_size=8", "train.threads=1", "train.eval_every=0", "train.log_every=2",
        "train.seed=5", "model.dropout=0.0"]
AR = BASE + ["process.name=ar", "train.max_steps=4", "train.ckpt_every=0", "train.grad_accum=2"]
MDLM = BASE + ["train.max_steps=6", "train.ckpt_every=3", "train.grad_accum=2"]


def _cfg(overrides):
    return apply_overrides(load_preset("tiny"), overrides)


def _weights(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class _SignalAt:
    """Batches that send this process SIGTERM when asked for `step` (as torchrun does on Ctrl-C)."""

    def __init__(self, batches, step):
        self.batches, self.step = batches, step

    def batch(self, step, rank=0, world=1):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.batches.batch(step, rank, world)


def _worker(rank: int, world: int, root: str) -> None:
    from ddlm.cli import main
    from ddlm.train.loop import Trainer, TrainingStopped

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    distributed.init(distributed.from_env())
    out = {}
    for name, overrides in (("ar", AR), ("mdlm", MDLM)):
        t = Trainer(_cfg(overrides), f"{root}/{name}", rank=rank, world=world, progress=False, overwrite=True)
        out[name + "_init"] = _weights(t.backbone)
        t.run()
        out[name] = _weights(t.backbone)
        out[name + "_ema"] = t.ema.state_dict()
    # rank 1 alone is interrupted during step 3: both ranks stop after it, rank 0 checkpoints, both say so
    t = Trainer(_cfg(AR + ["train.max_steps=50"]), f"{root}/stop", rank=rank, world=world, progress=False,
                overwrite=True)
    if rank == 1:
        t.batches = _SignalAt(t.batches, step=2)
    try:
        t.run()
        out["stopped"] = None
    except TrainingStopped:
        out["stopped"] = t.step
    torch.save(out, f"{root}/rank{rank}.pt")
    distributed.barrier()
    if rank == 0:  # forget the last checkpoint: the CLI resumes from step 3 with both ranks
        newest = list_checkpoints(f"{root}/mdlm")[0]
        newest.unlink()
        newest.with_suffix(".sha256").unlink()
    distributed.barrier()
    code = main(["train", "--resume", f"{root}/mdlm", "--quiet"])  # the CLI reads RANK/WORLD_SIZE itself
    assert code == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _newest(run) -> dict:
    return torch.load(io.BytesIO(verify(list_checkpoints(run)[0])), weights_only=False)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        mp.spawn(_worker, args=(2, str(root)), nprocs=2, join=True)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return root, [torch.load(root / f"rank{r}.pt") for r in range(2)]


@pytest.mark.slow
def test_ranks_end_with_identical_weights(two_ranks):
    _, (r0, r1) = two_ranks
    for name in ("ar", "ar_ema", "mdlm", "mdlm_ema"):
        for k in r0[name]:
            assert torch.equal(r0[name][k], r1[name][k]), (name, k)


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_same_global_batch(two_ranks, tmp_path):
    from ddlm.train.loop import Trainer

    _, (r0, _) = two_ranks
    # one process, one micro-batch of all 8 rows; the ranks had 4 rows each in 2 micro-batches of 2
    t = Trainer(_cfg(AR + ["train.grad_accum=1"]), tmp_path / "one", progress=False)
    t.run()
    single = _weights(t.backbone)
    for k, v in single.items():  # the all-reduce sums in another order: on an AVX-512 machine one weight in
        torch.testing.assert_close(r0["ar"][k], v, rtol=1e-5, atol=5e-6)  # 16,384 differed by 1.3e-6
    # and it trained: the weights moved from the initial ones by far more than the tolerance
    assert max(float((r0["ar_init"][k] - single[k]).abs().max()) for k in single) > 1e-3


@pytest.mark.slow
def test_an_interrupt_on_one_rank_stops_all_ranks_after_the_same_step(two_ranks):
    root, (r0, r1) = two_ranks
    assert r0["stopped"] == r1["stopped"] == 3
    assert _newest(root / "stop")["step"] == 3


@pytest.mark.slow
def test_resume_through_the_cli_with_two_ranks_is_exact(two_ranks):
    root, (r0, _) = two_ranks
    state = _newest(root / "mdlm")
    assert state["step"] == 6
    for k, v in state["model"].items():
        assert torch.equal(v, r0["mdlm"][k]), k
    for k, v in state["ema"].items():
        assert torch.equal(v, r0["mdlm_ema"][k]), k


def test_ranks_draw_different_noise_and_a_resume_draws_the_same():
    seeds = {distributed.step_seed(3, s, r) for s in range(50) for r in range(4)}
    assert len(seeds) == 200 and all(0 <= x < 2**63 for x in seeds)
    g1, g2 = torch.Generator(), torch.Generator()
    distributed.reseed_step(g1, 3, 7, 1)
    torch.rand(5, generator=g1)  # the state of an earlier step does not matter
    distributed.reseed_step(g1, 3, 8, 1)
    distributed.reseed_step(g2, 3, 8, 1)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_bad_settings_are_user_errors():
    assert distributed.from_env({}) == distributed.DistEnv()
    env = distributed.from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (env.rank, env.world, env.backend) == (1, 4, "gloo")
    assert distributed.from_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, device="cuda").backend == "nccl"
    with pytest.raises(UserError, match="missing"):
        distributed.from_env({"RANK": "0"})
    with pytest.raises(UserError, match="inconsistent"):
        distributed.from_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(UserError, match="integers"):
        distributed.from_env({"RANK": "a", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(UserError, match="divisible by the number of processes"):
        distributed.check_batch(10, 1, 4)
    with pytest.raises(UserError, match="grad_accum"):
        distributed.check_batch(8, 4, 4)
    distributed.check_batch(8, 2, 4)
