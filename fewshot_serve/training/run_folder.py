"""A training run's folder, shared by both stages (meta-training and pretraining).

Each stage owns its loop and what a step is; this owns what the loops have in common: the folder
(``checkpoint.safetensors``, ``log.jsonl``, ``curves.png``), resuming from it, keeping the
best-validating weights, and the checkpoint that also exports the model file, so a run killed at
any point leaves a usable model and resumes where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..files.atomic import atomic_write_text
from ..files.model_file import Recipe, save_model
from ..networks import MetaNetwork
from .checkpoint import TrainingState, resume_checkpoint, save_checkpoint
from .run_log import plot_curves, read_log

#: Both stages validate on the same fixed episodes at every validation, whatever the training seed.
VALIDATION_SEED = 1234


class RunFolder:
    """``path``'s checkpoint, log and curves; ``metric`` names what the curves' validation plots."""

    def __init__(self, path: Path, metric: str, create: bool = True) -> None:
        self.path, self.metric = path, metric
        self.checkpoint_path, self.log_path = path / "checkpoint.safetensors", path / "log.jsonl"
        self.log: list[dict[str, Any]] = []
        if create:  # every distributed process but the first only reads
            path.mkdir(parents=True, exist_ok=True)

    def resume(self, config: Any) -> TrainingState | None:
        """The checkpoint's state (refused if made with other settings) and its log up to it; None
        where the folder holds no checkpoint yet."""
        if not self.checkpoint_path.exists():
            return None
        state = resume_checkpoint(self.checkpoint_path, config)
        self.log = [record for record in read_log(self.log_path) if record["iteration"] <= state.iteration]
        return state

    def save(self, state: TrainingState, out: Path, network: MetaNetwork, recipe: Recipe,
             params: dict[str, torch.Tensor]) -> None:
        """Checkpoint ``state``, write the log and curves, and export ``params`` as the model file ``out``."""
        save_checkpoint(self.checkpoint_path, state)
        atomic_write_text(self.log_path, "".join(json.dumps(record) + "\n" for record in self.log))
        save_model(out, network, recipe, params)
        plot_curves(self.log, self.path / "curves.png", self.metric)

    def diverged(self, where: str, loss: float, remedy: str) -> FloatingPointError:
        """The error a non-finite loss raises: what to change, and that nothing saved is lost."""
        return FloatingPointError(f"{where} (loss {loss}); {remedy}. The last checkpoint in {self.path} and the "
                                  "model exported with it are kept.")


def keep_if_best(state: TrainingState, score: float, iteration: int, params: dict[str, torch.Tensor],
                 higher_is_better: bool = True) -> bool:
    """Record ``params`` as the run's best where ``score`` beats the best so far; returns whether it did."""
    best = state.best_score
    improved = best is None or (score > best if higher_is_better else score < best)
    if improved:
        state.best_score, state.best_iteration, state.best_params = score, iteration, params
    return improved
