import os

# The suite is a CPU suite: bit-exact resume and the 2-process DDP tests assume CPU kernels and one device per
# process. Hide any GPU from this process and from the `python -m ddlm` subprocesses the tests start, before
# torch initialises CUDA (train.device defaults to "auto").
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests are small: one thread avoids oversubscription on shared 2-core machines."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny MDLM trained for a few steps through the library (shared by several tests)."""
    import ddlm

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = ddlm.apply_overrides(ddlm.load_preset("tiny"), ["train.max_steps=12", "model.max_len=16",
                                                          "train.ckpt_every=6"])
    model = ddlm.fit(cfg, out, progress=False)
    return out, model
