"""The networks that get meta-learned: Conv4 for images, a small MLP for sinusoid regression.

Both are ``nn.Module``s that own the meta-parameters, but compute as pure functions of a
params dict (:meth:`MetaNetwork.apply_params`), so one instance serves any number of concurrent
adaptations without copies and without ever being modified.

Two choices here matter for serving:

* **Support-set BatchNorm.** MAML uses BatchNorm with batch statistics and no running averages.
  We take those statistics from the *support* images only (the first ``n_ref`` rows of the
  batch), in meta-training and at serving alike. A query's prediction then never depends on the
  other queries it is batched with, and the adapted classifier freezes into a plain eval-mode
  network (the support statistics become its running statistics) that exports to ONNX.
* **One shared head row** (Ye & Chao, ICLR 2022). The head holds a single learned weight row and
  bias; a task with N classes starts from N identical copies of it. Identical rows make the
  initial logits equal for every class, so the adapted model is invariant to the order of the
  classes and works for any N >= 2 regardless of the N used in meta-training. Unlike a
  zero-initialized head, the shared row is itself meta-learned (zero is one point it may learn).
  As with a zero head, the first inner step moves only the head (the loss gradient reaching the
  features, sum_c (p_c - y_c) w, is zero while the rows are equal), so recipes use >= 2 steps.

Two MAML++ options (Antoniou et al., ICLR 2019) live here too, because they are meta-parameters
that serving must read from the model file like any weight:

* **Learned per-step learning rates** (``lr_steps > 0``): ``step_lrs[i, k]`` is the inner learning
  rate of the i-th fast weight (in :meth:`MetaNetwork.fast_weight_names` order) at step k.
* **Per-step BatchNorm weights** (``norm_states > 0``, Conv4): each norm weight and bias has one
  row per state of the inner loop (row k is used after k steps). They are learned by the outer
  loop only, so the inner loop does not adapt them.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-5

#: Parameters a task copies once per class (dimension 0) before its inner loop.
HEAD_KEYS = ("head.weight", "head.bias")


def step_lr(inner_lrs: Sequence[float], step: int) -> float:
    """A fixed schedule's learning rate at ``step``; steps past its end reuse its last entry."""
    return inner_lrs[min(step, len(inner_lrs) - 1)]


def support_norm(x: Tensor, weight: Tensor, bias: Tensor, n_ref: int | None) -> Tensor:
    """BatchNorm over ``x`` with statistics of its first ``n_ref`` rows (all rows if None).

    Written out rather than ``F.batch_norm(training=True)``: MAML differentiates through it twice,
    and the fused kernel's second derivative under ``torch.func.grad`` disagreed with finite
    differences (relative error 7e-5 on the test of tests/test_meta_gradients.py).
    """
    ref = x if n_ref is None else x[:n_ref]
    var, mean = torch.var_mean(ref, dim=(0, 2, 3), unbiased=False, keepdim=True)
    scale = weight.view(1, -1, 1, 1) * torch.rsqrt(var + BN_EPS)
    return (x - mean) * scale + bias.view(1, -1, 1, 1)


class SupportBatchNorm(nn.Module):
    """The affine parameters of a BatchNorm whose statistics come from the support rows.

    With ``states > 0`` the weight and bias hold one row per inner-loop state (MAML++).
    """

    def __init__(self, channels: int, states: int = 0) -> None:
        super().__init__()
        shape = (states, channels) if states else (channels,)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))


class ConvBlock(nn.Module):
    """Parameters of 3x3 conv -> support BatchNorm -> ReLU -> 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, norm_states: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = SupportBatchNorm(out_channels, norm_states)


class MetaNetwork(nn.Module):
    """A network whose computation is a pure function of a params dict.

    The modules only own and name the meta-parameters. :meth:`apply_params` computes with any
    params dict without touching the module, so concurrent adaptations on one instance are safe
    (``torch.func.functional_call`` would swap the module's attributes during each call, and two
    threads would see each other's weights).
    """

    task_kind: str  # "classification" or "regression"
    lr_steps: int = 0  # learned per-step inner learning rates (MAML++ LSLR): how many steps
    norm_states: int = 0  # per-step BatchNorm weights (MAML++ BNWB): rows per norm parameter

    def add_step_lrs(self, steps: int) -> None:
        """Give every fast weight its own learned learning rate per inner step (call after building)."""
        self.lr_steps = steps
        if steps:
            self.step_lrs = nn.Parameter(torch.zeros(len(self.fast_weight_names()), steps))

    def reset_step_lrs(self, inner_lrs: Sequence[float]) -> None:
        """Start the learned learning rates at the fixed schedule ``inner_lrs`` (last entry repeats)."""
        with torch.no_grad():
            for step in range(self.lr_steps):
                self.step_lrs[:, step] = step_lr(inner_lrs, step)

    def fast_weight_names(self) -> list[str]:
        """The parameters the inner loop adapts, in ``named_parameters`` order."""
        return [name for name, _ in self.named_parameters() if self._is_fast_weight(name)]

    def _is_fast_weight(self, name: str) -> bool:
        return name != "step_lrs"

    def inner_lrs_at(
        self, params: dict[str, Tensor], step: int, inner_lrs: Sequence[float], names: Sequence[str]
    ) -> dict[str, Any]:
        """Learning rate of each fast weight at inner step ``step`` (learned ones if the network has them).

        ``names`` are :meth:`fast_weight_names`, which the caller computes once per adaptation.
        """
        if self.lr_steps:
            column = params["step_lrs"][:, min(step, self.lr_steps - 1)]
            return {name: column[i] for i, name in enumerate(names)}
        return dict.fromkeys(names, step_lr(inner_lrs, step))

    def at_step(self, params: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """The params :meth:`apply_params` takes in the inner loop's state ``step`` (after that many steps)."""
        return {k: v for k, v in params.items() if k != "step_lrs"} if self.lr_steps else params

    def apply_params(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        """The network's output on ``x`` with ``params``; normalization statistics from ``x[:n_ref]``."""
        raise NotImplementedError

    def forward(self, x: Tensor, n_ref: int | None = None) -> Tensor:
        """The output before any adaptation (inner-loop state 0)."""
        return self.apply_params(self.at_step(dict(self.named_parameters()), 0), x, n_ref)

    def config(self) -> dict[str, Any]:
        """The architecture's hyper-parameters, enough for :func:`build_network` to rebuild it."""
        raise NotImplementedError

    def task_parameters(self, meta_params: dict[str, Tensor], ways: int) -> dict[str, Tensor]:
        """The parameters a task with ``ways`` classes starts its inner loop from."""
        return dict(meta_params)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError


class Conv4(MetaNetwork):
    """The standard 4-block convolutional few-shot learner (Vinyals et al. 2016; Finn et al. 2017)."""

    task_kind = "classification"

    def __init__(
        self, in_channels: int = 1, filters: int = 64, image_size: int = 28, norm_states: int = 0, lr_steps: int = 0
    ) -> None:
        super().__init__()
        if image_size < 16:
            raise ValueError(f"Conv4 needs images of at least 16x16 pixels, got {image_size}")
        self.in_channels, self.filters, self.image_size = in_channels, filters, image_size
        self.norm_states = norm_states
        channels = [in_channels, filters, filters, filters, filters]
        self.blocks = nn.ModuleList(ConvBlock(a, b, norm_states) for a, b in zip(channels, channels[1:]))
        side = image_size
        for _ in self.blocks:
            side //= 2
        self.feature_dim = filters * side * side
        self.head = nn.Linear(self.feature_dim, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.add_step_lrs(lr_steps)

    def config(self) -> dict[str, Any]:
        return {
            "architecture": "conv4",
            "in_channels": self.in_channels,
            "filters": self.filters,
            "image_size": self.image_size,
            "norm_states": self.norm_states,
            "lr_steps": self.lr_steps,
        }

    def _is_fast_weight(self, name: str) -> bool:
        return super()._is_fast_weight(name) and not (self.norm_states and ".norm." in name)

    def at_step(self, params: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        params = super().at_step(params, step)
        if self.norm_states:
            row = min(step, self.norm_states - 1)
            params = {k: v[row] if ".norm." in k else v for k, v in params.items()}
        return params

    def apply_params(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        for i in range(len(self.blocks)):
            prefix = f"blocks.{i}."
            x = F.conv2d(x, params[prefix + "conv.weight"], params[prefix + "conv.bias"], padding=1)
            x = support_norm(x, params[prefix + "norm.weight"], params[prefix + "norm.bias"], n_ref)
            x = F.max_pool2d(F.relu(x), 2)
        return F.linear(x.flatten(1), params["head.weight"], params["head.bias"])

    @torch.no_grad()
    def freeze(self, params: dict[str, Tensor], x_support: Tensor) -> nn.Sequential:
        """The adapted classifier as a plain eval-mode network ending in softmax.

        Each BatchNorm's support statistics under ``params`` become its running statistics, so
        the result computes exactly what :func:`~fewshot_serve.inner_loop.predict` does, one
        image at a time, from standard layers that export to ONNX.
        """
        layers: list[nn.Module] = []
        x = x_support
        for i in range(len(self.blocks)):
            prefix = f"blocks.{i}."
            weight = params[prefix + "conv.weight"]
            conv = nn.Conv2d(weight.shape[1], weight.shape[0], kernel_size=3, padding=1)
            conv.weight.copy_(weight)
            conv.bias.copy_(params[prefix + "conv.bias"])
            h = conv.to(x.device)(x)
            norm = nn.BatchNorm2d(weight.shape[0], eps=BN_EPS)
            norm.weight.copy_(params[prefix + "norm.weight"])
            norm.bias.copy_(params[prefix + "norm.bias"])
            norm.running_mean.copy_(h.mean(dim=(0, 2, 3)))
            norm.running_var.copy_(h.var(dim=(0, 2, 3), unbiased=False))
            block = [conv, norm.to(x.device).eval(), nn.ReLU(), nn.MaxPool2d(2)]
            x = nn.Sequential(*block[1:])(h)
            layers += block
        head = nn.Linear(self.feature_dim, params["head.weight"].shape[0])
        head.weight.copy_(params["head.weight"])
        head.bias.copy_(params["head.bias"])
        frozen = nn.Sequential(*layers, nn.Flatten(), head, nn.Softmax(dim=-1)).to(x.device).eval()
        # channels-last: 2.6x faster classification on CPU, mostly from max-pooling (benchmarks/adapt_latency.py)
        return frozen.to(memory_format=torch.channels_last)

    def task_parameters(self, meta_params: dict[str, Tensor], ways: int) -> dict[str, Tensor]:
        params = dict(meta_params)
        for key in HEAD_KEYS:
            params[key] = meta_params[key].expand(ways, *meta_params[key].shape[1:]).clone()
        return params

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets)


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

    def config(self) -> dict[str, Any]:
        return {"architecture": "mlp", "hidden": self.hidden, "lr_steps": self.lr_steps}

    def apply_params(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        for index in (0, 2):
            x = F.relu(F.linear(x, params[f"layers.{index}.weight"], params[f"layers.{index}.bias"]))
        return F.linear(x, params["layers.4.weight"], params["layers.4.bias"])

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(outputs, targets)


def build_network(config: dict[str, Any]) -> MetaNetwork:
    """Rebuild a network from :meth:`MetaNetwork.config` (as stored in a model file)."""
    config = dict(config)
    architecture = config.pop("architecture", None)
    if architecture == "conv4":
        return Conv4(**config)
    if architecture == "mlp":
        return SinusoidMLP(**config)
    raise ValueError(f"unknown architecture {architecture!r} (known: 'conv4', 'mlp')")
