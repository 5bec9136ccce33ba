"""ddlm: discrete diffusion language models (MDLM, D3PM, RDM, RADD) and an autoregressive baseline.

    import ddlm
    cfg = ddlm.load_preset("quick")
    model = ddlm.fit(cfg, "runs/quick")
    print(model.generate(n=2).texts)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import (DataConfig, ModelConfig, ProcessConfig, RunConfig, SampleConfig, TrainConfig,
                     apply_overrides, load_preset, preset_names)
from .errors import UserError

if TYPE_CHECKING:
    from .pipeline import SequenceModel

__version__ = "0.1.0"


def __getattr__(name):
    # torch and the models load on first use, so that `import ddlm.cli` (the `ddlm` command, --help,
    # --version) starts fast and a Ctrl-C during start-up reaches the command's handler
    if name == "SequenceModel":
        from .pipeline import SequenceModel
        return SequenceModel
    raise AttributeError(f"module 'ddlm' has no attribute {name!r}")


def fit(cfg: RunConfig, out, *, overwrite: bool = False, progress: bool = True) -> SequenceModel:
    """Train `cfg` into the run directory `out`; returns the model with its EMA weights."""
    from .train.loop import Trainer

    return Trainer(cfg, out, overwrite=overwrite, progress=progress).run()


def evaluate(model: SequenceModel, data: str | None = None, **options) -> dict:
    """Likelihood on the validation split of `data` (default: the model's corpus): nll (nats/token), bpc, ppl,
    n_tokens, ci95. Options go to `ddlm.eval.elbo.evaluate_nll` (t_samples, max_blocks, batch_size, seed)."""
    from .eval.elbo import evaluate_nll
    from .train.loop import validation_blocks

    return evaluate_nll(model, validation_blocks(model.cfg, model.tokenizer, data), **options)


__all__ = ["RunConfig", "ModelConfig", "ProcessConfig", "DataConfig", "TrainConfig", "SampleConfig",
           "load_preset", "apply_overrides", "preset_names", "SequenceModel", "UserError", "fit", "evaluate"]
