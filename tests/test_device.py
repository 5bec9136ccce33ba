"""train.device: the choice of device and backend (torch.cuda patched, so it is tested without a GPU), the
one-line errors, CPU runs unchanged by the setting, checkpoints that hold CPU tensors, and the per-step noise
of a GPU run (forced on the CPU here) resuming exactly from a checkpoint whose generator state is foreign."""

from __future__ import annotations

import collections
import io
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ddlm.cli import main
from cli_harness import run_cli as _run
from ddlm.config import apply_overrides, load_preset
from ddlm.errors import UserError
from ddlm.train import distributed
from ddlm.train.checkpoint import list_checkpoints, save_checkpoint, verify
from ddlm.train.device import backend_for, parse_device, resolve_device, to_cpu
from ddlm.train.loop import Trainer
from ddlm.train.optim import EMA

FAST = ["model.max_len=16", "train.max_steps=8", "train.ckpt_every=4", "train.eval_every=4", "train.log_every=2",
        "train.threads=1", "model.dropout=0.1", "train.seed=3"]
NO_CUDA = "train.device=cuda but torch sees no CUDA device; use train.device=cpu or install a CUDA build of torch"


@pytest.fixture(autouse=True)
def _restore_rng():
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


def _gpus(monkeypatch, n: int) -> None:
    """Make torch report n CUDA devices (0: none)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)




def _checkpoint(run, map_location="cpu") -> dict:
    return torch.load(io.BytesIO(verify(list_checkpoints(run)[0])), map_location=map_location, weights_only=False)


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _tensors(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _tensors(v)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- the choice of device and backend ---------------------------------------------------------------------
def test_auto_is_cpu_without_cuda_and_the_first_gpu_with_it(monkeypatch):
    _gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")
    _gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")  # cpu is always there


def test_torchrun_local_rank_takes_its_own_gpu_and_nccl(monkeypatch):
    _gpus(monkeypatch, 4)
    env = distributed.from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    for spec in ("auto", "cuda"):
        device = resolve_device(spec, env.local_rank, env.local_world)
        assert device == torch.device("cuda", 1)  # LOCAL_RANK, not RANK
        assert backend_for(device) == "nccl"
    assert [resolve_device("cuda", r, 4).index for r in range(4)] == [0, 1, 2, 3]
    cpu = resolve_device("cpu", env.local_rank, env.local_world)
    assert cpu == torch.device("cpu") and backend_for(cpu) == "gloo"
    assert resolve_device("cuda:3") == torch.device("cuda", 3)  # one process may name its GPU


def test_impossible_placements_are_one_line_user_errors(monkeypatch):
    _gpus(monkeypatch, 0)
    with pytest.raises(UserError) as e:
        resolve_device("cuda")
    assert str(e.value) == NO_CUDA
    with pytest.raises(UserError, match="train.device=cuda:1 but torch sees no CUDA device"):
        resolve_device("cuda:1")
    _gpus(monkeypatch, 2)
    with pytest.raises(UserError, match=r"torch sees 2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    with pytest.raises(UserError, match="started 3 processes on this machine but torch sees 2"):
        resolve_device("auto", local_rank=2, local_world=3)
    with pytest.raises(UserError, match="all 2 processes of this machine on one GPU"):
        resolve_device("cuda:0", local_rank=1, local_world=2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match="no MPS"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    with pytest.raises(UserError, match="one process"):
        resolve_device("mps", local_rank=0, local_world=2)


@pytest.mark.parametrize("spec", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:x", "cuda:1:2", "cpu:0", " cpu", "",
                                  "cuda:\u0663", None, 0])
def test_malformed_device_settings_are_rejected(spec):
    with pytest.raises(UserError, match="train.device must be auto, cpu, cuda, cuda:N or mps"):
        parse_device(spec)


def test_forms_parse():
    assert [parse_device(s) for s in ("auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps")] == [
        ("auto", None), ("cpu", None), ("cuda", None), ("cuda", 0), ("cuda", 12), ("mps", None)]


class _FakeDist:
    """Just enough of torch.distributed for group_for: a default group with a backend config."""

    def __init__(self, config):
        self.config, self.made = config, []

    def get_backend_config(self):
        return self.config

    def get_backend(self):
        return self.config.split(",")[0].split(":")[-1]

    def new_group(self, backend):
        self.made.append(backend)
        return f"group-{backend}"


@pytest.mark.parametrize("config, backend, made", [
    ("cpu:gloo,cuda:gloo", "gloo", None),          # torchrun's default group serves CPU gradients itself
    ("cpu:gloo,cuda:gloo", "nccl", "nccl"),        # CUDA gradients get an NCCL group of their own
    ("cpu:gloo,cuda:nccl", "nccl", None),
    ("cpu:gloo,cuda:nccl", "gloo", None),
    ("cuda:nccl", "gloo", "gloo"),                 # an NCCL-only default group cannot move CPU gradients
])
def test_ddp_gradients_go_over_a_group_of_their_backend(monkeypatch, config, backend, made):
    fake = _FakeDist(config)
    monkeypatch.setattr(distributed, "dist", fake)
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    group = distributed.group_for(backend)
    assert fake.made == ([made] if made else [])
    assert group == (f"group-{made}" if made else None)


# ---- through the CLI --------------------------------------------------------------------------------------
def test_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path, monkeypatch):
    _gpus(monkeypatch, 0)
    out = tmp_path / "run"
    status, stdout, err = _run(["train", "--preset", "tiny", "--out", str(out), "--quiet", "train.device=cuda"])
    assert status == 2 and stdout == ""
    assert err == f"ddlm train: error: {NO_CUDA}\n"
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "3", "[cuda]"])
def test_malformed_device_through_the_cli(tmp_path, value):
    status, _, err = _run(["train", "--preset", "tiny", "--out", str(tmp_path / "r"), "--quiet",
                           f"train.device={value}"])
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "train.device must be" in err
    assert not (tmp_path / "r").exists()


# ---- CPU runs -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cpu_runs(tmp_path_factory):
    """The same tiny run with the default device (no CUDA visible) and with train.device=cpu."""
    root = tmp_path_factory.mktemp("device")
    with pytest.MonkeyPatch.context() as mp_:
        _gpus(mp_, 0)
        runs = {}
        for name, extra in (("default", []), ("cpu", ["train.device=cpu"])):
            t = Trainer(apply_overrides(load_preset("tiny"), FAST + extra), root / name, progress=False)
            assert t.device == torch.device("cpu") and not t.reseed_each_step
            t.run()
            runs[name] = t
    return root, runs


def test_cpu_equals_the_default_run_bit_for_bit(cpu_runs):
    root, runs = cpu_runs
    a, b = runs["default"], runs["cpu"]
    assert _equal(a.backbone.state_dict(), b.backbone.state_dict())
    assert _equal(a.ema.state_dict(), b.ema.state_dict())
    ca, cb = _checkpoint(root / "default"), _checkpoint(root / "cpu")
    assert ca["step"] == cb["step"] == 8
    assert torch.equal(ca["noise"], cb["noise"])
    for key in ("model", "ema"):
        assert _equal(ca[key], cb[key])
    assert ca["config"]["train"]["device"] == "auto" and cb["config"]["train"]["device"] == "cpu"


def test_checkpoints_and_the_exported_model_hold_cpu_tensors(cpu_runs):
    from safetensors import safe_open

    root, runs = cpu_runs
    state = _checkpoint(root / "default", map_location=None)  # each tensor where it was saved from
    found = list(_tensors(state))
    assert len(found) > 20 and all(t.device.type == "cpu" for t in found)
    with safe_open(str(root / "default" / "model" / "model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).device.type == "cpu" for k in f.keys())
    exported = runs["default"].export_model("cpu")
    assert exported.device.type == "cpu" and not exported.backbone.training


def test_to_cpu_rebuilds_only_what_moved(monkeypatch):
    Pair = collections.namedtuple("Pair", "a b")
    sd = torch.nn.Linear(2, 2).state_dict()
    tree = {"model": sd, "opt": {"state": {0: {"step": torch.tensor(3.0)}}, "groups": [{"lr": 0.1}]},
            "rng": (3, (1, 2), None), "pair": Pair(torch.ones(2), "x"), "n": 5}
    assert to_cpu(tree) is tree  # all on the CPU: the same object, so a CPU checkpoint's bytes do not change
    # pretend every tensor lives elsewhere: .cpu() then returns a new tensor, as it does from a GPU
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self: self.clone())
    moved = to_cpu(tree)
    assert moved is not tree and moved["rng"] is tree["rng"] and moved["n"] == 5
    assert type(moved["model"]) is type(sd) and moved["model"]._metadata == sd._metadata
    assert moved["model"]["weight"] is not sd["weight"] and torch.equal(moved["model"]["weight"], sd["weight"])
    assert isinstance(moved["pair"], Pair) and moved["pair"].b == "x" and torch.equal(moved["pair"].a, torch.ones(2))
    assert moved["opt"]["groups"] is tree["opt"]["groups"]
    assert torch.equal(moved["opt"]["state"][0]["step"], torch.tensor(3.0))


def test_loaded_ema_follows_the_device_of_the_weights():
    ema = EMA(torch.nn.Linear(3, 2, device="meta"), 0.9)  # a model on another device than the checkpoint
    ema.load_state_dict(torch.nn.Linear(3, 2).state_dict())
    assert {v.device.type for v in ema.state_dict().values()} == {"meta"}


# ---- the noise of a GPU run, forced on the CPU ------------------------------------------------------------
def _rewrite_newest_but_one(src: Path, dst: Path, noise: torch.Tensor) -> None:
    """dst: a copy of run src cut back to its step-4 checkpoint, whose noise state is replaced by `noise`."""
    shutil.copytree(src, dst)
    newest, older = list_checkpoints(dst)[:2]
    newest.unlink()
    newest.with_suffix(".sha256").unlink()
    state = torch.load(io.BytesIO(verify(older)), weights_only=False)
    assert state["step"] == 4
    state["noise"] = noise
    save_checkpoint(dst, state)


def test_per_step_noise_resumes_exactly_without_the_generator_state(tmp_path, cpu_runs):
    _, runs = cpu_runs
    cfg = apply_overrides(load_preset("tiny"), FAST + ["train.device=cpu"])
    ref = Trainer(cfg, tmp_path / "ref", progress=False)
    ref.reseed_each_step = True  # what a CUDA run does
    ref.run()
    assert not _equal(ref.backbone.state_dict(), runs["cpu"].backbone.state_dict())  # the mode matters
    gpu_state = torch.zeros(16, dtype=torch.uint8)  # the size of a CUDA (Philox) generator's state
    _rewrite_newest_but_one(tmp_path / "ref", tmp_path / "resumed", gpu_state)
    t = Trainer.resume(tmp_path / "resumed", progress=False, log=lambda *a: None)
    t.reseed_each_step = True  # set after loading the checkpoint, as a CUDA Trainer has it from the start
    t.run()
    assert _equal(t.backbone.state_dict(), ref.backbone.state_dict())
    assert _equal(t.ema.state_dict(), ref.ema.state_dict())


def test_a_foreign_generator_state_on_one_cpu_process_goes_on_with_a_message(tmp_path, cpu_runs):
    root, runs = cpu_runs
    _rewrite_newest_but_one(root / "cpu", tmp_path / "moved", torch.zeros(16, dtype=torch.uint8))
    logs = []
    t = Trainer.resume(tmp_path / "moved", progress=False, log=logs.append)
    t.run()
    assert t.step == 8 and any("another device" in m for m in logs)
    assert not _equal(t.backbone.state_dict(), runs["cpu"].backbone.state_dict())  # different noise, said so


# ---- ranks that disagree stop together ---------------------------------------------------------------------
def _place_worker(rank: int, world: int, root: str, port: int) -> None:
    from ddlm.train.loop import _place

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.is_available = lambda: False
    distributed.init(distributed.from_env(), timeout_s=60)
    try:
        result = str(_place("cpu" if rank == 0 else "cuda", rank, world))
    except UserError as e:
        result = f"error: {e}"
    Path(root, f"rank{rank}.txt").write_text(result)
    distributed.shutdown()


@pytest.mark.slow
def test_a_rank_that_cannot_place_itself_stops_every_rank(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_place_worker, args=(2, str(tmp_path), port), nprocs=2, join=True)
    r0, r1 = ((tmp_path / f"rank{r}.txt").read_text() for r in range(2))
    assert r0.startswith("error: train.device=cpu gives different devices on different processes"), r0
    assert r1 == f"error: {NO_CUDA}"


# ---- the objectives the Trainer calls keep to the batch's device ---------------------------------------------
class _Tok:
    vocab_size = 12


@pytest.mark.parametrize("family", ["mdlm", "rdm-absorbing", "rdm-multinomial", "ar"])
def test_objectives_keep_every_tensor_on_the_batch_device(family):
    """The meta device stands in for a GPU: a CPU tensor meeting a meta one is an error, as with CUDA. (The D3PM
    families check t's values with .item(), which a meta tensor cannot answer, so they are not covered here.)"""
    from ddlm.families import configure
    from ddlm.pipeline import SequenceModel

    overrides = [f"process.name={family}", "model.max_len=8", "model.n_layers=1", "model.d_model=16",
                 "model.n_heads=2", "process.steps=4"]
    model = SequenceModel(configure(apply_overrides(load_preset("tiny"), overrides), overrides), _Tok()).to("meta")
    x0 = torch.randint(0, _Tok.vocab_size, (4, 8)).to("meta")
    out = model.family.objective(model.backbone, x0, None)
    out["loss"].backward()
    assert out["loss"].device.type == "meta"
    assert all(p.grad.device.type == "meta" for p in model.backbone.parameters() if p.grad is not None)
    assert model.family.objective.bound(model.backbone, x0, generator=None).device.type == "meta"


def test_cli_device_option_for_sample_eval_and_sudoku(tmp_path, capsys):
    """--device on the commands that load a model: cpu works, cuda without CUDA is one line naming --device."""
    from ddlm import SequenceModel, apply_overrides, load_preset
    from ddlm.cli import main
    from ddlm.data.tokenizers import CharTokenizer

    cfg = apply_overrides(load_preset("tiny"), ["model.max_len=16"])
    SequenceModel(cfg, CharTokenizer("abcdefgh")).save_pretrained(tmp_path / "m")
    assert main(["sample", str(tmp_path / "m"), "--device", "cpu", "--n", "1", "--steps", "2", "--json"]) == 0
    capsys.readouterr()
    for argv in (["sample", str(tmp_path / "m")], ["eval", str(tmp_path / "m")],
                 ["sudoku", "solve", "0" * 81, "--model", str(tmp_path / "m")]):
        assert main(argv + ["--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "--device=cuda but torch sees no CUDA device; use --device=cpu" in err
        assert main(argv + ["--device", "gpu"]) == 2
        assert "--device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'" in capsys.readouterr().err
