"""The sinusoid regressor of the MAML paper (Finn et al. 2017, section 5.1)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .base import MetaNetwork
from .config_checks import is_int, key_problems, step_count_problems


class SinusoidMLP(MetaNetwork):
    """The 1-40-40-1 ReLU regressor of the MAML paper's sinusoid experiment."""

    task_kind = "regression"

    def __init__(self, hidden: int = 40, lr_steps: int = 0) -> None:
        super().__init__()
        self.hidden = hidden
        self.layers = nn.Sequential(
            nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        self.add_step_lrs(lr_steps)

    @classmethod
    def config_problems(cls, config: dict[str, Any]) -> list[str]:
        if key_problems(config, {"hidden"}, {"lr_steps"}) or not is_int(config["hidden"], 1, 4096):
            return ["mlp needs exactly one integer 'hidden' in [1, 4096] (and optionally lr_steps)"]
        return step_count_problems(config)

    @classmethod
    def input_shapes(cls, config: dict[str, Any]) -> list[tuple[Any, Any]]:
        return []  # one number in, no image

    def config(self) -> dict[str, Any]:
        return {"architecture": "mlp", "hidden": self.hidden, "lr_steps": self.lr_steps}

    def apply_params(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        for index in (0, 2):
            x = F.relu(F.linear(x, params[f"layers.{index}.weight"], params[f"layers.{index}.bias"]))
        return F.linear(x, params["layers.4.weight"], params["layers.4.bias"])

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(outputs, targets)
