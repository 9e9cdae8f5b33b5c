"""The one inner loop: a few SGD steps on a task's support loss.

Meta-training (all three algorithms) and serving call exactly this function, so what is served
is what was meta-trained. With ``composable=True`` it takes gradients with ``torch.func``, so that
``torch.func.grad`` of the query loss through it gives MAML's exact second-order meta-gradient
and ``torch.func.vmap`` over it adapts a whole meta-batch in one vectorized pass; by default it
uses plain autograd, leaner for one task at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .networks import MetaNetwork, first_order_kernels

Params = dict[str, Tensor]

#: The outer updates meta-training wraps around this loop (``training/meta_learning.py``); model files name theirs.
ALGORITHMS = ("maml", "fomaml", "reptile")


@dataclass(frozen=True)
class InnerLoop:
    """How a task adapts: per-step learning rates and step counts for training and testing."""

    inner_lrs: tuple[float, ...]
    train_steps: int
    test_steps: int

    def __post_init__(self) -> None:
        if not self.inner_lrs:
            raise ValueError("at least one inner learning rate is needed")
        if self.train_steps < 0 or self.test_steps < 0:
            raise ValueError("inner step counts must be >= 0")


class Adaptation(NamedTuple):
    #: the network's parameters after the last step, as :meth:`MetaNetwork.apply_params` takes them
    params: Params
    #: support loss before each step, shape ``[steps]`` (what the app plots)
    support_losses: Tensor
    #: the parameters after each step (``trajectory=True`` only; MAML++'s multi-step loss)
    trajectory: list[Params]


def requiring_grad(params: Params) -> Params:
    """``params`` as tensors autograd can differentiate with respect to (detached copies where needed)."""
    return {k: p if p.requires_grad else p.detach().requires_grad_() for k, p in params.items()}


def adapt(
    network: MetaNetwork,
    params: Params,
    x_support: Tensor,
    y_support: Tensor,
    inner_lrs: Sequence[float],
    steps: int,
    first_order: bool = False,
    composable: bool = False,
    trajectory: bool = False,
    head_first_step: bool = True,
    h_support: Tensor | None = None,
) -> Adaptation:
    """Take ``steps`` SGD steps from ``params``, a task's start (:meth:`MetaNetwork.task_parameters`),
    on the support loss.

    Only the network's fast weights move; MAML++'s learned learning rates and per-step norm
    weights (when the network has them) steer the steps and are read, not adapted. Layers before
    the first fast weight (:meth:`MetaNetwork.frozen_part`, e.g. an ANIL-style ResNet-12's body)
    run once, not once per step. ``inner_lrs``
    is the fixed schedule, used where the network has no learned learning rates.

    ``first_order`` treats the inner gradients as constants (FOMAML, Reptile, serving); otherwise
    the steps stay differentiable, so the gradient of anything computed from the result flows
    through every step (MAML's exact second order). Eager first-order steps run under
    :func:`~fewshot_serve.networks.first_order_kernels` (fused norms, channels-last on CPU).

    ``composable`` takes the inner gradients with ``torch.func.grad``, which works inside
    ``torch.func.vmap`` and ``torch.func.grad``; the default, plain ``torch.autograd.grad``,
    works everywhere else and keeps less alive: a second-order Conv4 task peaked at 199 MB above
    baseline with it and 454 MB with nested ``torch.func.grad``. Both compute the same steps, and
    the tests hold the vectorized and looped meta-batches to the same gradients.

    ``head_first_step``: where the network has a shared head row (``network.head_keys``), the
    first step's gradient reaches only the head, since every class starts from the same row. That
    step is then taken from one forward pass to the head's input and a backward through the head
    alone; the body's weights stay exactly as they are (the plain path, ``False``, moves them by
    rounding error only). Differentiable like any step: in second order, the head's update
    depends on the body through the features.

    ``h_support``: the frozen part's output on ``x_support`` where the caller has computed it
    already (serving does so under bfloat16 when asked: the frozen part is never differentiated).

    With ``network.prototype_head`` (Proto-MAML), each class's head row first moves to where its
    support features' mean puts it (:meth:`~fewshot_serve.networks.base.SharedHeadClassifier.prototype_rows`),
    so zero steps classify by nearest class mean; the rows then differ, so the head-only first
    step does not apply.
    """
    fast_names = network.fast_weight_names()
    fixed = {k: v for k, v in params.items() if k not in fast_names}
    fast = {k: params[k] for k in fast_names}
    # Layers before the first fast weight are the same at every step: run them once.
    if h_support is None:
        h_support = network.frozen_part(network.at_step(params, 0), x_support)
    kernels = first_order_kernels if first_order and not composable else contextlib.nullcontext

    def support_loss(weights: Params, step: int) -> Tensor:
        outputs = network.adapted_part(network.at_step({**fixed, **weights}, step), h_support)
        return network.loss(outputs, y_support)

    gradient = _gradient_function(support_loss, first_order, composable, kernels)
    if not composable:
        fast = requiring_grad(fast)
    losses, states = [], []
    with contextlib.nullcontext() if composable else torch.enable_grad():  # even under an outer no_grad
        if network.prototype_head:
            fast = _prototype_start(network, fixed, fast, h_support, y_support, first_order, kernels)
        for step in range(steps):
            if step == 0 and head_first_step and network.head_keys and not network.prototype_head:
                grads, loss = _head_only_gradient(network, fixed, fast, h_support, y_support, first_order,
                                                  composable, kernels)
            else:
                grads, loss = gradient(fast, step)
            lrs = network.inner_lrs_at(fixed, step, inner_lrs, fast_names)
            # A weight the step leaves alone still becomes a new graph node (a view), as a moved one
            # does: the next step's gradient must not also reach it through this step's head update.
            fast = {k: p - lrs[k] * grads[k] if k in grads else p.view_as(p) for k, p in fast.items()}
            losses.append(loss.detach())
            if trajectory:
                states.append(network.at_step({**fixed, **fast}, step + 1))
    support_losses = torch.stack(losses) if losses else x_support.new_zeros(0)
    return Adaptation(network.at_step({**fixed, **fast}, steps), support_losses, states)


Gradient = Callable[[Params, int], tuple[Params, Tensor]]


def _gradient_function(support_loss: Callable[[Params, int], Tensor], first_order: bool, composable: bool,
                       kernels: Callable[[], contextlib.AbstractContextManager]) -> Gradient:
    """``(fast weights, step) -> (their gradients, the support loss)``, chosen once per adaptation.

    ``composable``: ``torch.func.grad``; in first order under ``no_grad``, so the enclosing
    transforms do not record the inner backward at all (cheaper than detaching afterwards).
    Otherwise ``torch.autograd.grad``, keeping the graph for MAML's second order, under the fused
    first-order kernels when the step is differentiated once.
    """
    if composable:
        grad_and_loss = torch.func.grad_and_value(support_loss)

        def composable_gradient(fast: Params, step: int) -> tuple[Params, Tensor]:
            with torch.no_grad() if first_order else contextlib.nullcontext():
                return grad_and_loss(fast, step)

        return composable_gradient

    def autograd_gradient(fast: Params, step: int) -> tuple[Params, Tensor]:
        with kernels():
            loss = support_loss(fast, step)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
        return dict(zip(fast, grads)), loss

    return autograd_gradient


def _head_only_gradient(network: MetaNetwork, fixed: Params, fast: Params, h_support: Tensor, y_support: Tensor,
                        first_order: bool, composable: bool,
                        kernels: Callable[[], contextlib.AbstractContextManager]) -> tuple[Params, Tensor]:
    """The first step's gradient from a shared head row: it reaches the head alone, so it is taken
    from one forward pass to the head's input and a backward through the head only."""
    head, start = {k: fast[k] for k in network.head_keys}, {**fixed, **fast}

    def head_loss(head: Params, features: Tensor) -> Tensor:
        outputs = network.head_logits(network.at_step({**start, **head}, 0), features)
        return network.loss(outputs, y_support)

    # first order: nothing outside records the features or the step
    untracked = torch.no_grad() if first_order else contextlib.nullcontext()
    with untracked, kernels():
        features = network.head_input(network.at_step(start, 0), h_support)
    if composable:
        with untracked:
            return torch.func.grad_and_value(head_loss)(head, features)
    loss = head_loss(head, features)
    grads = torch.autograd.grad(loss, list(head.values()), create_graph=not first_order)
    return dict(zip(head, grads)), loss


def _prototype_start(network: MetaNetwork, fixed: Params, fast: Params, h_support: Tensor, y_support: Tensor,
                     first_order: bool, kernels: Callable[[], contextlib.AbstractContextManager]) -> Params:
    """Proto-MAML: each class's head row moved to where its support features' mean puts it."""
    with torch.no_grad() if first_order else contextlib.nullcontext(), kernels():
        features = network.head_input(network.at_step({**fixed, **fast}, 0), h_support)
    rows = network.prototype_rows(features, y_support, fast["head.weight"].shape[0])
    # The rows then are weights of their own: views give the other weights new graph nodes, so
    # that the first step's gradient reaches them only through the support loss, not the rows.
    return {k: p + rows[k] if k in rows else p.view_as(p) for k, p in fast.items()}


def predict(network: MetaNetwork, params: Params, x_support: Tensor, x_query: Tensor) -> Tensor:
    """Query outputs of adapted ``params``; normalization statistics come from the support set."""
    n_support = x_support.shape[0]
    outputs = network.apply_params(params, torch.cat([x_support, x_query]), n_support)
    return outputs[n_support:]
