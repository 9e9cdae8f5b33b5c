"""The one inner loop: a few SGD steps on a task's support loss.

Meta-training (all three algorithms) and serving call exactly this function, so what is served
is what was meta-trained. It is written with ``torch.func`` so that it composes with the
transforms around it: ``torch.func.grad`` of the query loss through it gives MAML's exact
second-order meta-gradient, and ``torch.func.vmap`` over it adapts a whole meta-batch (or a batch
of concurrent serving requests) in one vectorized pass.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from .networks import MetaNetwork

Params = dict[str, Tensor]


class Adaptation(NamedTuple):
    params: Params
    #: support loss before each step, shape ``[steps]`` (what the app plots)
    support_losses: Tensor


def step_lr(inner_lrs: Sequence[float], step: int) -> float:
    """Per-step learning rate; steps past the end of the schedule reuse its last entry."""
    return inner_lrs[min(step, len(inner_lrs) - 1)]


def adapt(
    network: MetaNetwork,
    params: Params,
    x_support: Tensor,
    y_support: Tensor,
    inner_lrs: Sequence[float],
    steps: int,
    first_order: bool = False,
) -> Adaptation:
    """Take ``steps`` SGD steps from ``params`` on the support loss.

    ``first_order`` stops gradients through the inner gradients (FOMAML, Reptile and serving);
    otherwise any enclosing ``torch.func.grad`` differentiates through every step (MAML).
    """

    def support_loss(p: Params) -> Tensor:
        return network.loss(network.apply_params(p, x_support), y_support)

    grad_and_loss = torch.func.grad_and_value(support_loss)
    losses = []
    for step in range(steps):
        grads, loss = grad_and_loss(params)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        lr = step_lr(inner_lrs, step)
        params = {k: p - lr * grads[k] for k, p in params.items()}
        losses.append(loss.detach())
    support_losses = torch.stack(losses) if losses else x_support.new_zeros(0)
    return Adaptation(params, support_losses)


def predict(network: MetaNetwork, params: Params, x_support: Tensor, x_query: Tensor) -> Tensor:
    """Query outputs of adapted ``params``; normalization statistics come from the support set."""
    n_support = x_support.shape[0]
    outputs = network.apply_params(params, torch.cat([x_support, x_query]), n_support)
    return outputs[n_support:]
