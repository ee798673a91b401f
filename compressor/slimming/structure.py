"""Does the config still describe the model? A stock reload builds the model from config.json, so after every cut
the config must produce exactly the same tensor names and shapes as the modules in memory.

    check_structure(model)     # raises StructureMismatchError listing the disagreements
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class StructureMismatchError(RuntimeError):
    """The config no longer rebuilds the in-memory model; saving it would give a checkpoint that fails to load."""


def expected_shapes(config, model_class) -> dict[str, tuple[int, ...]]:
    """State-dict names and shapes of a fresh `model_class` built from `config` (on the meta device: no memory)."""
    cfg = copy.deepcopy(config)
    with torch.device("meta"):
        fresh = model_class._from_config(cfg)
    return {k: tuple(v.shape) for k, v in fresh.state_dict().items()}


def check_structure(model: nn.Module) -> None:
    """Raise `StructureMismatchError` when `model.config` would rebuild different tensor names or shapes."""
    want = expected_shapes(model.config, type(model))
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = [f"{k}: config gives {want[k]}, model has {have[k]}" for k in sorted(set(want) & set(have))
                if want[k] != have[k]]
    problems += [f"{k}: in the model, not in what the config builds" for k in sorted(set(have) - set(want))]
    problems += [f"{k}: built by the config, missing from the model" for k in sorted(set(want) - set(have))]
    if problems:
        more = f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""
        raise StructureMismatchError("the config no longer describes the model, so a reload would fail: "
                                     + "; ".join(problems[:8]) + more)
