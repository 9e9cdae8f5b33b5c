"""Training checkpoints in safetensors: everything needed to resume bit-identically, no pickle.

A checkpoint holds the trained weights, the best-so-far parameters, the optimizer's state, the task
sampler's RNG state, and (as JSON metadata) the iteration, the best validation score and the
run's configuration, so ``--resume`` with a different configuration is refused, not silently mixed.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..files.atomic import atomic_output

STATE_KEY = "fewshot_serve.training.checkpoint"


@dataclass
class TrainingState:
    """A run of either stage as a checkpoint holds it (the names say nothing of which stage)."""

    iteration: int  # iterations (meta-training) or optimizer steps (pretraining) completed
    weights: dict[str, torch.Tensor]  # what the run trains (meta-parameters; a backbone and its classifier)
    best_params: dict[str, torch.Tensor]  # the best-validating weights, as exported
    best_score: float | None  # validation metric of best_params
    best_iteration: int
    optimizer: dict[str, Any] | None  # the optimizer's state_dict (Adam, SGD), or None (Reptile)
    rng_state: torch.Tensor  # the task sampler's torch.Generator state
    config: dict[str, Any]


#: Tensor-name prefixes: what this version writes, and what checkpoints before it wrote (still read).
WEIGHTS, OPTIMIZER = "weights/", "optimizer/"
EARLIER_NAMES = {WEIGHTS: "meta/", OPTIMIZER: "adam/"}


def save_checkpoint(path: str | os.PathLike, state: TrainingState) -> None:
    tensors = {f"{WEIGHTS}{k}": v for k, v in state.weights.items()}
    tensors.update({f"best/{k}": v for k, v in state.best_params.items()})
    tensors["rng"] = state.rng_state
    optimizer_groups = None
    if state.optimizer is not None:
        for index, slots in state.optimizer["state"].items():
            for slot, value in slots.items():
                tensors[f"{OPTIMIZER}{index}/{slot}"] = torch.as_tensor(value)
        optimizer_groups = state.optimizer["param_groups"]
    info = {
        "iteration": state.iteration,
        "best_score": state.best_score,
        "best_iteration": state.best_iteration,
        "optimizer_groups": optimizer_groups,
        "config": state.config,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_output(path) as temporary:
        save_file(tensors, str(temporary), metadata={STATE_KEY: json.dumps(info)})


def load_checkpoint(path: str | os.PathLike) -> TrainingState:
    with safe_open(str(path), framework="pt") as handle:
        info = json.loads((handle.metadata() or {})[STATE_KEY])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}

    def section(prefix: str) -> dict[str, torch.Tensor]:
        if prefix in EARLIER_NAMES and not any(k.startswith(prefix) for k in tensors):
            prefix = EARLIER_NAMES[prefix]  # a checkpoint written before the neutral names
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    optimizer = None
    if info["optimizer_groups"] is not None:
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in section(OPTIMIZER).items():
            index, slot = key.split("/")
            slots.setdefault(int(index), {})[slot] = value
        optimizer = {"state": slots, "param_groups": info["optimizer_groups"]}
    return TrainingState(
        iteration=info["iteration"],
        weights=section(WEIGHTS),
        best_params=section("best/"),
        best_score=info["best_score"],
        best_iteration=info["best_iteration"],
        optimizer=optimizer,
        rng_state=tensors["rng"],
        config=info["config"],
    )


def fingerprint(config: Any) -> dict[str, Any]:
    """The settings a resumed run must share with the run it continues, in JSON form: the fields of
    the configuration dataclass ``config`` less its ``volatile_settings`` (where the output goes, the
    device, how long to run: what a resumed run may change)."""
    settings = asdict(config)
    for volatile in config.volatile_settings:
        settings.pop(volatile)
    return json.loads(json.dumps(settings, default=str))


def resume_checkpoint(path: str | os.PathLike, config: Any) -> TrainingState:
    """The checkpoint at ``path``, refused (naming the settings that differ) unless made with the
    settings of ``config`` (a configuration dataclass: :func:`fingerprint`).

    A setting missing on either side counts as its default (:func:`setting_defaults`): a run
    checkpointed before a setting existed still resumes, as long as this run leaves that setting
    at its default, which is what the earlier run did without knowing it. A setting renamed since
    (the class's ``renamed_settings``) is compared under its new name.
    """
    state = load_checkpoint(path)
    defaults = setting_defaults(type(config))
    renamed = getattr(config, "renamed_settings", {})
    earlier = {renamed.get(k, k): v for k, v in state.config.items()}
    made, wanted = {**defaults, **earlier}, {**defaults, **fingerprint(config)}
    if made != wanted:
        differing = sorted(k for k in set(made) | set(wanted) if made.get(k) != wanted.get(k))
        raise ValueError(f"cannot resume {path}: it was made with different settings ({', '.join(differing)})")
    return state


def setting_defaults(config_class: type) -> dict[str, Any]:
    """The defaults of a configuration dataclass's fields, in the JSON form fingerprints take."""
    defaults = {}
    for field in fields(config_class):
        if field.default is not MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not MISSING:
            defaults[field.name] = field.default_factory()
    return json.loads(json.dumps(defaults, default=str))
