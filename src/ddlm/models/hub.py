"""`save_pretrained` / `from_pretrained`: a Hub-compatible directory with config.json, model.safetensors and
tokenizer.json. Files are written under temporary names and renamed, so a crash never leaves a half-written
model behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError

FORMAT_VERSION = 1


def save_state(directory, config: dict, state_dict: dict, tokenizer) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    tmp = directory / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / "model.safetensors")
    tokenizer.save(directory)
    meta = {"ddlm_format": FORMAT_VERSION, "library": "ddlm", **config}
    tmp = directory / "config.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, directory / "config.json")


def load_state(directory) -> tuple[dict, dict]:
    """(config dict, state dict) from a save_pretrained directory, with clear errors."""
    directory = Path(directory)
    cfg_path, weights = directory / "config.json", directory / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise UserError(f"{directory} is not a ddlm model directory (needs config.json and model.safetensors)")
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg_path} is not valid JSON ({e}); the model directory is damaged") from None
    version = meta.get("ddlm_format")
    if version != FORMAT_VERSION:
        raise UserError(f"{directory} was written by an incompatible ddlm version (format {version!r}, this "
                        f"ddlm reads format {FORMAT_VERSION}); retrain or use the matching ddlm release")
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise UserError(f"{weights} cannot be read ({e}); the model file is damaged") from None
    return meta, state


def load_weights(module: torch.nn.Module, state: dict, source) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"weights in {source} do not match the model described by its config "
                        f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
