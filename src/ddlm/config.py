"""Configuration: one frozen dataclass per concern, YAML presets, and `section.field=value` overrides.

Each field's docstring-comment (the string after it) doubles as `--help` text, so keep it one line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

import yaml

from .errors import UserError


@dataclass(frozen=True)
class ModelConfig:
    n_layers: int = 4
    "number of transformer blocks"
    d_model: int = 256
    "width of the residual stream"
    n_heads: int = 4
    "attention heads (d_model must be divisible by it)"
    mlp_ratio: float = 4.0
    "MLP hidden width as a multiple of d_model"
    dropout: float = 0.0
    "dropout probability in attention and MLP"
    max_len: int = 128
    "context length in tokens (the length of a training block)"
    positions: str = "rotary"
    "position encoding: rotary (text), learned (one table), rotary+learned (both: records padded to a fixed row), "
    "grid (sum of row, column[, box] tables)"
    grid: tuple = ()
    "for positions=grid: (rows, cols) or (rows, cols, box_rows, box_cols); e.g. [9, 9, 3, 3] for Sudoku"
    time_conditioning: bool = False
    "condition the denoiser on t through adaLN (off by default, as in MDLM; needed for D3PM)"
    n_classes: int = 0
    "class labels the backbone is conditioned on (a learned embedding plus a null label); 0 = unconditional"
    class_names: tuple = ()
    "names of the labels 0..n_classes-1, set with n_classes from labelled records (sample --cond NAME)"


@dataclass(frozen=True)
class ProcessConfig:
    name: str = "mdlm"
    "model family: mdlm, d3pm-uniform, d3pm-absorbing, d3pm-gaussian, d3pm-nn, rdm-absorbing, rdm-multinomial, ar"
    schedule: str = "loglinear"
    "noise schedule alpha(t): loglinear, linear, cosine, geometric"
    t_sampling: str = "stratified"
    "how training draws t: uniform, stratified (low-discrepancy), antithetic"
    discrete_steps: int = 0
    "0 = continuous-time ELBO; T > 0 = the discrete-time ELBO with T steps"
    t_eps: float = 1e-3
    "smallest t drawn in training and evaluation (avoids the 1/t singularity)"
    loss_weighting: str = "elbo"
    "elbo (the Rao-Blackwellised NELBO, -alpha'/(1-alpha) weights) or ce (masked cross-entropy averaged over masked tokens)"
    steps: int = 1000
    "D3PM/RDM: number of discrete time steps T"
    discrete_schedule: str = ""
    "D3PM/RDM beta schedule: absorbing (1/(T-t+1)), cosine, linear, mutual_information; empty = the family's default"
    hybrid_lambda: float = 0.01
    "D3PM: weight of the auxiliary cross-entropy in L_vb + lambda * CE"
    rdm_weighting: str = "linear"
    "RDM training weights of the noisy-token CE at step t: linear (1-(t-1)/T), reciprocal (1/t), none (1), elbo"
    routing: str = "deterministic"
    "RDM --sampler routing: deterministic (top-k scores) or stochastic (Gumbel-top-k, routing_temperature)"
    routing_temperature: float = 1.0
    "RDM stochastic routing: Gumbel noise scale on the scores (annealed with the noise level)"
    routing_schedule: str = "linear"
    "RDM routing: how many tokens stay noisy after each step: linear or cosine"
    routing_condition: str = "cond"
    "RDM routing: cond (re-noise a decoded token only if the model now agrees but is less sure), uncond or none"
    masking: str = "uniform"
    "training masks: uniform (q(x_t | x_0) at a random t) or progressive (PUMA: the model's own unmasking chains; mdlm)"
    progressive_phases: int = 10
    "progressive masking: K phases; phase j reveals a fraction in [j/K, (j+1)/K) of the counted positions"
    progressive_planner: str = "top_prob"
    "progressive masking: the order cells are revealed in: top_prob, top_margin, entropy or random"
    progressive_threshold: float = 0.0
    "progressive masking: also reveal every cell with max_v p(v) above this (PUMA uses 0.9 on Sudoku); 0 = off"
    progressive_fraction: float = 1.0
    "progressive masking: fraction of each batch drawn from the chains (the other rows are masked uniformly)"


@dataclass(frozen=True)
class DataConfig:
    source: str = "kjv"
    "corpus: kjv, shakespeare, a text file path or a glob"
    tokenizer: str = "char"
    "tokenizer: char, byte or bpe (trained on the corpus)"
    vocab_size: int = 1024
    "vocabulary size of a BPE tokenizer"
    val_fraction: float = 0.05
    "fraction of the corpus held out for validation (deterministic, interleaved)"
    records: str = "none"
    "none (one stream cut into blocks) or records, one per row: lines (a file), verses (kjv), speeches (shakespeare)"
    long_records: str = "skip"
    "records longer than a block: skip, cut (first tokens, no <eos>) or error"
    padding: str = "skip"
    "records (not ar): skip (the loss and attention skip <pad>; the default, measured better lengths) or learn (<pad> counts in the loss, LLaDA SFT)"


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 1000
    "number of optimiser steps"
    batch_size: int = 32
    "sequences per step (global, across gradient accumulation)"
    grad_accum: int = 1
    "micro-batches per optimiser step"
    lr: float = 1e-3
    "peak learning rate of AdamW"
    min_lr_ratio: float = 0.1
    "cosine decay ends at lr * min_lr_ratio"
    warmup_steps: int = 100
    "linear warm-up steps"
    weight_decay: float = 0.01
    "AdamW weight decay (not applied to norms, biases and embeddings)"
    beta2: float = 0.99
    "AdamW beta2"
    grad_clip: float = 1.0
    "clip the gradient norm at this value (0 = off)"
    ema: float = 0.999
    "EMA decay of the weights used for sampling and evaluation (0 = off)"
    eval_every: int = 250
    "validate every N steps (0 = only at the end)"
    eval_batches: int = 8
    "validation batches per evaluation"
    ckpt_every: int = 250
    "write a resumable checkpoint every N steps (and at the end)"
    log_every: int = 10
    "log training metrics every N steps (0 = only at the end)"
    tensorboard: bool = False
    "also write loss, validation bpc and lr for TensorBoard into RUN/tensorboard (needs: pip install tensorboard)"
    seed: int = 0
    "seed for initialisation, data order and noise"
    threads: int = 0
    "torch CPU threads (0 = the machine's default)"
    compile: bool = False
    "wrap the backbone in torch.compile"
    device: str = "auto"
    "auto (cuda if torch sees a GPU, else cpu), cpu, cuda, cuda:N or mps; under torchrun process r takes cuda:LOCAL_RANK"
    cond_dropout: float = 0.1
    "labelled data: probability a row's label is replaced by the null label (one model, conditional and not: CFG)"


@dataclass(frozen=True)
class SampleConfig:
    steps: int = 128
    "denoising steps"
    sampler: str = "ancestral"
    "ancestral, cached (skips the network where nothing changed; time-free models) or planned"
    planner: str = "random"
    "which masked positions a planned sampler commits: random, top_prob, top_margin, entropy, confidence"
    temperature: float = 1.0
    "softmax temperature of the token distribution (0 = greedy)"
    planner_options: dict = field(default_factory=dict)
    ("options of the planner ({gumbel: 0.5}, {threshold: 0.8}, {schedule: cosine}) or of the remask sampler "
     "({schedule: cap, eta: 0.05}); they apply with this section's sampler and planner")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        sections = {}
        for f in fields(cls):
            sub = d.get(f.name, {}) or {}
            if not isinstance(sub, dict):
                raise UserError(f"config section {f.name!r} must be a mapping of field: value, got {sub!r}")
            sections[f.name] = _build(f.default_factory, sub, f.name)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise UserError(f"unknown config section(s) {sorted(unknown)}; valid: {[f.name for f in fields(cls)]}")
        return cls(**sections)

    def replace(self, **sections) -> "RunConfig":
        return dataclasses.replace(self, **sections)

    def save(self, path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _build(cls, values: dict, section: str):
    names = {f.name: f for f in fields(cls)}
    unknown = set(values) - set(names)
    if unknown:
        raise UserError(f"unknown field(s) {sorted(unknown)} in config section {section!r}; "
                        f"valid: {', '.join(names)}")
    kwargs = {}
    for k, v in values.items():
        kwargs[k] = _coerce(v, type(getattr(cls(), k)), f"{section}.{k}")
    return cls(**kwargs)


def _coerce(value, typ, name):
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{name} must be true or false, got {value!r}")
    if typ is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise UserError(f"{name} must be a list such as [9, 9, 3, 3], got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UserError(f"{name} must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{name} must be a number, got {value!r}")
        return float(value)
    if typ is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise UserError(f"{name} must be a mapping such as {{gumbel: 0.5}}, got {value!r}")
        return dict(value)
    if typ is str:
        if not isinstance(value, str):
            raise UserError(f"{name} must be a string, got {value!r}")
    return value


def field_help(preset: str = "quick") -> list[tuple[str, str, object, object]]:
    """(dotted name, help, built-in default, value in `preset`) of every field, for `ddlm train --help`."""
    values = load_preset(preset).to_dict()
    out = []
    for sec in fields(RunConfig):
        cls = sec.default_factory
        src = _docstrings(cls)
        for f in fields(cls):
            out.append((f"{sec.name}.{f.name}", src.get(f.name, ""), getattr(cls(), f.name),
                        values[sec.name][f.name]))
    return out


def _docstrings(cls) -> dict:
    """The string literal written after each field is its help text."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    out = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            out[a.target.id] = b.value.value
    return out


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("ddlm").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))


def load_preset(name: str, _chain: tuple = ()) -> RunConfig:
    """A named preset from src/ddlm/configs/NAME.yaml, or a path to a YAML file.

    A file may build on another preset with a top-level `base: NAME` (a named preset, or a path relative to
    the file): the base is loaded first and the file's sections set fields on top of it, field by field."""
    path = Path(name)
    if name.endswith((".yaml", ".yml")) and path.exists():
        key = str(path.resolve())
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else (e.strerror or type(e).__name__)
            raise UserError(f"cannot read preset file {name}: {reason}; give a UTF-8 YAML file") from None
    else:
        res = resources.files("ddlm").joinpath("configs", f"{name}.yaml")
        if not res.is_file():
            raise UserError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())} "
                            "or give a path to a .yaml file")
        key, path = f"preset:{name}", None
        text = res.read_text()
    if key in _chain:
        names = [c.removeprefix("preset:") for c in (*_chain, key)]
        raise UserError(f"preset {name!r} builds on itself through `base:` ({' -> '.join(names)}); remove one "
                        "of the base: lines")
    try:
        d = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: {getattr(e, 'problem', '') or ''}" if mark else str(e).splitlines()[0]
        raise UserError(f"preset {name!r} is not valid YAML ({where.strip()}); fix that line") from None
    if not isinstance(d, dict):
        raise UserError(f"preset {name!r} must be a YAML mapping of sections (model:, train:, ...), "
                        f"not a {type(d).__name__}")
    if "base" not in d:
        return RunConfig.from_dict(d)
    base = d.pop("base")
    if not isinstance(base, str) or not base:
        raise UserError(f"base: in preset {name!r} must be a preset name or a .yaml path, got {base!r}")
    if path is not None and base.endswith((".yaml", ".yml")) and not Path(base).is_absolute():
        base = str(path.parent / base)  # relative to the file that names it
    merged = load_preset(base, (*_chain, key)).to_dict()
    for section, values in d.items():
        if section in merged and isinstance(values, dict):
            merged[section].update(values)
        else:  # from_dict names the unknown section or the bad value
            merged[section] = values
    return RunConfig.from_dict(merged)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.field=value` strings (values parsed as YAML: 3, 1e-3, true, [9, 9])."""
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UserError(f"override {item!r} must look like section.field=value, e.g. model.n_layers=6")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        if section not in d:
            raise UserError(f"unknown config section {section!r} in {item!r}; valid: {', '.join(d)}")
        if name not in d[section]:
            raise UserError(f"unknown field {name!r} in section {section!r}; valid: {', '.join(d[section])}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        d[section][name] = value
    return RunConfig.from_dict(d)
