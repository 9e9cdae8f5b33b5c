"""MAML, FOMAML and Reptile: three outer updates around the one inner loop.

* MAML (Finn et al. 2017): the exact gradient of the query loss after the inner loop with respect
  to the initialization, differentiating through every inner step (second order).
* FOMAML: the same, with the inner gradients treated as constants, so the meta-gradient is the
  query-loss gradient at the adapted parameters.
* Reptile (Nichol et al. 2018): no query loss; move the initialization towards the adapted
  parameters, θ ← θ + ε·mean_i(θ'_i − θ), with ε annealed linearly to zero.

Tasks of a meta-batch are adapted in one ``torch.func.vmap`` pass (``vectorize=True``); the
per-task loop is kept as the reference the tests compare it with.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from ..data.episodes import TaskBatch
from ..inner_loop import ALGORITHMS, InnerLoop, Params, adapt, predict, requiring_grad
from ..networks import MetaNetwork, first_order_kernels

REPTILE_REFUSES_MAML_PLUS_PLUS = "the MAML++ options need a query loss: use them with maml or fomaml, not reptile"


def task_outcome(
    network: MetaNetwork,
    meta_params: Params,
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    y_query: Tensor,
    *,
    ways: int,
    inner_lrs: Sequence[float],
    steps: int,
    first_order: bool,
    composable: bool,
    step_weights: Sequence[float] | None = None,
) -> tuple[Tensor, Tensor, Params, Params]:
    """Adapt to one task; return its query loss, metric, start and adapted parameters.

    The metric is accuracy for classification and the loss itself (MSE) for regression, both
    after the last step. ``step_weights`` (MAML++'s multi-step loss) makes the loss the weighted
    sum of the query losses after every step. ``composable`` must be True under ``torch.func``
    transforms (see :func:`adapt`).
    """
    start = network.task_parameters(meta_params, ways)
    adaptation = adapt(network, start, x_support, y_support, inner_lrs, steps, first_order, composable,
                       trajectory=step_weights is not None)
    # the trajectory ends with the final parameters, so its last outputs are the final outputs
    states = [adaptation.params] if step_weights is None else adaptation.trajectory
    # The outer gradient goes through the query pass once (it creates no graph), MAML's included, so
    # outside torch.func transforms the pass runs the fused kernels (Conv4 on CPU: MAML 1.3x, FOMAML 1.6x
    # faster in all; benchmarks/profile_meta_training.py).
    with contextlib.nullcontext() if composable else first_order_kernels():
        outputs = [predict(network, state, x_support, x_query) for state in states]
    losses = [network.loss(state_outputs, y_query) for state_outputs in outputs]
    loss = losses[-1] if step_weights is None else sum(w * step_loss for w, step_loss in zip(step_weights, losses))
    if network.task_kind == "classification":
        metric = (outputs[-1].argmax(-1) == y_query).float().mean()
    else:
        metric = losses[-1].detach()
    return loss, metric, start, adaptation.params


def _over_tasks(fn: Callable, meta_params: Params, batch: TaskBatch, vectorize: bool):
    """Apply ``fn(meta_params, xs, ys, xq, yq)`` to every task, stacking the results."""
    data = (batch.x_support, batch.y_support, batch.x_query, batch.y_query)
    if vectorize:
        return vmap(fn, in_dims=(None, 0, 0, 0, 0))(meta_params, *data)
    return _stack([fn(meta_params, *task) for task in zip(*data)])


def _stack(results: list):
    """Stack a list of equally structured (tuple / dict / tensor) results along a new dim 0."""
    first = results[0]
    if isinstance(first, Tensor):
        return torch.stack(results)
    if isinstance(first, dict):
        return {k: _stack([r[k] for r in results]) for k in first}
    return tuple(_stack(list(parts)) for parts in zip(*results))


def meta_gradient(
    network: MetaNetwork,
    meta_params: Params,
    batch: TaskBatch,
    inner: InnerLoop,
    first_order: bool,
    vectorize: bool = True,
    step_weights: Sequence[float] | None = None,
) -> tuple[Params, Tensor, Tensor]:
    """MAML (``first_order=False``) or FOMAML meta-gradient of the mean query loss.

    Returns the gradient for every meta-parameter, the mean query loss and the mean metric.
    ``step_weights``: MAML++'s multi-step loss (see :func:`task_outcome`).
    """
    outcome = partial(
        task_outcome, network, ways=batch.ways, inner_lrs=inner.inner_lrs, steps=inner.train_steps,
        first_order=first_order, step_weights=step_weights,
    )
    data = (batch.x_support, batch.y_support, batch.x_query, batch.y_query)
    if vectorize:
        def mean_query_loss(params: Params) -> tuple[Tensor, Tensor]:
            task = partial(outcome, composable=True)
            losses, metrics, _, _ = vmap(task, in_dims=(None, 0, 0, 0, 0))(params, *data)
            return losses.mean(), metrics.mean()

        grads, (loss, metric) = grad_and_value(mean_query_loss, has_aux=True)(meta_params)
        return grads, loss.detach(), metric
    # The reference: plain autograd, one task's graph alive at a time, gradients accumulated.
    params = requiring_grad(meta_params)
    total: Params = {k: torch.zeros_like(v) for k, v in params.items()}
    losses, metrics = [], []
    for task in zip(*data):
        with torch.enable_grad():
            loss, metric, _, _ = outcome(params, *task, composable=False)
            grads = torch.autograd.grad(loss, list(params.values()))
        for key, grad in zip(params, grads):
            total[key] += grad
        losses.append(loss.detach())
        metrics.append(metric)
    tasks = len(losses)
    return {k: v / tasks for k, v in total.items()}, torch.stack(losses).mean(), torch.stack(metrics).mean()


def reptile_displacement(
    network: MetaNetwork,
    meta_params: Params,
    batch: TaskBatch,
    inner: InnerLoop,
    vectorize: bool = True,
) -> tuple[Params, Tensor, Tensor]:
    """Mean over tasks of θ'ᵢ − θ, with the per-class head copies folded back into the shared row."""
    outcome = partial(
        task_outcome, network, ways=batch.ways, inner_lrs=inner.inner_lrs, steps=inner.train_steps,
        first_order=True, composable=vectorize,
    )

    def displacement(params: Params, *task: Tensor):
        loss, metric, start, adapted = outcome(params, *task)
        moved = {}
        for key, theta in params.items():
            delta = adapted[key] - start[key]
            moved[key] = delta if delta.shape == theta.shape else delta.mean(0, keepdim=True)
        return moved, loss, metric

    with torch.no_grad():
        moved, losses, metrics = _over_tasks(displacement, meta_params, batch, vectorize)
    return {k: v.mean(0) for k, v in moved.items()}, losses.mean(), metrics.mean()


def vmap_is_faster(network: MetaNetwork, device: torch.device) -> bool:
    """Whether to adapt a meta-batch with ``vmap`` rather than a per-task loop (measured).

    vmap fuses many tiny per-task ops into a few large ones, a big win for the sinusoid MLP
    everywhere and for convnets on CUDA. On CPU a convnet's per-task convolutions are already
    large, and vmap's grouped-convolution lowering of per-task weights runs about 2x slower.
    """
    return device.type == "cuda" or network.task_kind != "classification"


@dataclass(frozen=True)
class Annealing:
    """MAML++'s schedules over a run (Antoniou et al., ICLR 2019); each is off at its default.

    * ``multi_step_loss_iterations``: for this many iterations the query loss after *every*
      inner step counts, weighted equally at first and annealed towards the last step's; after
      them only the last step counts. Early on, this gives every step a direct gradient.
    * ``first_order_iterations``: MAML runs first order (FOMAML) for this many iterations, then
      second order: cheap, stable early progress, exact gradients to finish.
    * ``cosine_meta_lr``: Adam's learning rate follows a cosine from the meta learning rate down
      to 1% of it at the last iteration.
    """

    multi_step_loss_iterations: int = 0
    first_order_iterations: int = 0
    cosine_meta_lr: bool = False

    def step_weights(self, steps: int, iteration: int) -> list[float] | None:
        """Multi-step loss weights for ``iteration``, or None (last step only) once annealed."""
        if iteration >= self.multi_step_loss_iterations or steps < 2:
            return None
        progress = iteration / self.multi_step_loss_iterations
        earlier = max((1.0 - progress) / steps, 0.03 / steps)
        return [earlier] * (steps - 1) + [1.0 - earlier * (steps - 1)]

    def first_order(self, algorithm: str, iteration: int) -> bool:
        return algorithm == "fomaml" or (algorithm == "maml" and iteration < self.first_order_iterations)

    def meta_lr(self, meta_lr: float, iteration: int, iterations: int) -> float:
        if not self.cosine_meta_lr:
            return meta_lr
        floor = 0.01 * meta_lr
        return floor + 0.5 * (meta_lr - floor) * (1.0 + math.cos(math.pi * iteration / max(iterations - 1, 1)))


class MetaLearner:
    """Owns the meta-parameters (the network's own parameters) and applies one outer update.

    Every schedule is a function of the iteration number alone, so a resumed run continues it
    exactly. :meth:`step` is :meth:`update_direction` then :meth:`apply`; run apart, they let
    :mod:`fewshot_serve.training.distributed` combine the directions of several processes in between.
    """

    def __init__(
        self,
        network: MetaNetwork,
        algorithm: str,
        inner: InnerLoop,
        meta_lr: float,
        iterations: int,
        vectorize: bool = True,
        annealing: Annealing = Annealing(),
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        if algorithm == "reptile" and (network.lr_steps or network.norm_states or annealing != Annealing()):
            raise ValueError(REPTILE_REFUSES_MAML_PLUS_PLUS)
        self.network, self.algorithm, self.inner = network, algorithm, inner
        self.meta_lr, self.iterations, self.vectorize = meta_lr, iterations, vectorize
        self.annealing = annealing
        self.meta_params: Params = dict(network.named_parameters())
        # Reptile's outer step is its own interpolation; MAML and FOMAML use Adam as in the papers.
        self.optimizer = None if algorithm == "reptile" else torch.optim.Adam(network.parameters(), lr=meta_lr)

    def reptile_step_size(self, iteration: int) -> float:
        """ε, annealed linearly from the meta learning rate to zero over the run."""
        return self.meta_lr * (1.0 - iteration / max(self.iterations, 1))

    def update_direction(self, batch: TaskBatch, iteration: int) -> tuple[Params, Tensor, Tensor]:
        """This iteration's meta-gradient (MAML, FOMAML) or mean displacement (Reptile) on ``batch``."""
        if self.optimizer is None:
            return reptile_displacement(self.network, self.meta_params, batch, self.inner, self.vectorize)
        return meta_gradient(
            self.network, self.meta_params, batch, self.inner,
            first_order=self.annealing.first_order(self.algorithm, iteration), vectorize=self.vectorize,
            step_weights=self.annealing.step_weights(self.inner.train_steps, iteration),
        )

    def apply(self, direction: Params, iteration: int) -> None:
        """Move the meta-parameters along ``direction`` (from :meth:`update_direction`)."""
        if self.optimizer is None:
            epsilon = self.reptile_step_size(iteration)
            with torch.no_grad():
                for key, theta in self.meta_params.items():
                    theta.add_(direction[key], alpha=epsilon)
            return
        for group in self.optimizer.param_groups:
            group["lr"] = self.annealing.meta_lr(self.meta_lr, iteration, self.iterations)
        for key, theta in self.meta_params.items():
            theta.grad = direction[key]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, batch: TaskBatch, iteration: int) -> tuple[float, float]:
        """One outer update on ``batch``; returns the mean query loss and metric before it."""
        direction, loss, metric = self.update_direction(batch, iteration)
        self.apply(direction, iteration)
        return float(loss), float(metric)


def adapted_metrics(
    network: MetaNetwork, meta_params: Params, batch: TaskBatch, inner_lrs: Sequence[float], steps: int,
    vectorize: bool = True,
) -> Tensor:
    """Per-task query metric after ``steps`` inner steps, as at serving (no meta-gradient)."""
    outcome = partial(task_outcome, network, ways=batch.ways, inner_lrs=inner_lrs, steps=steps, first_order=True,
                      composable=vectorize)
    with torch.no_grad():
        _, metrics, _, _ = _over_tasks(outcome, meta_params, batch, vectorize)
    return metrics
