"""Support-set BatchNorm, and the faster kernels for passes that are differentiated only once.

MAML uses BatchNorm with batch statistics and no running averages. We take those statistics from
the *support* images only (the first ``n_ref`` rows of a batch), in meta-training and at serving
alike. A query's prediction then never depends on the other queries it is batched with, and the
adapted classifier folds into a plain eval-mode network (the support statistics become its
running statistics) that exports to ONNX.

The default arithmetic is written out, because MAML differentiates its inner steps twice. Passes
differentiated at most once (serving's and FOMAML's steps, every query pass of meta-training) run
under :func:`first_order_kernels`, which swaps in fused kernels that compute the same function.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

BN_EPS = 1e-5


def channel_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``x`` over batch and space, each ``[C]`` (what folding bakes in).

    Two passes (the mean, then the mean squared deviation from it) rather than ``torch.var_mean``,
    whose reduction over dims (0, 2, 3) measured 30x slower on CPU (2.5 ms against 80 us for a
    5x64x28x28 activation, one thread): the single largest cost of an inner step.
    """
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    centred = x - mean
    return mean.flatten(), (centred * centred).mean(dim=(0, 2, 3))


_FIRST_ORDER_KERNELS = contextvars.ContextVar("first_order_kernels", default=False)


@contextlib.contextmanager
def first_order_kernels() -> Iterator[None]:
    """Within it, networks run the kernels that are fastest for being differentiated at most once.

    For first-order inner steps taken eagerly (serving, FOMAML, Reptile) and meta-training's
    query passes (MAML included: the outer gradient goes through them once); not inside
    ``torch.func`` transforms. Three changes, each the same function to float rounding
    (relative 1e-6 in float32, 1e-14 in float64):

    * Norms over whole batches use PyTorch's fused BatchNorm: forward and backward measured
      2.6-3.4x faster than :func:`support_norm`'s written-out arithmetic on Conv4's support
      activations (one CPU thread). Its *second* derivative is what MAML cannot use (see
      :func:`support_norm`), so it is not the default.
    * Norms with the statistics of the first rows (a query pass: support and query images,
      normalized with the support's statistics) use :class:`SupportStatisticsNorm`, one fused
      normalization forward and a hand-derived backward.
    * On CPU, Conv4 runs its activations channels-last, where pooling and the fused norms
      vectorize over channels; ``torch.func.vmap`` does not implement the layout.

    Adaptations (with classification) measured 1.3-1.75x faster than with the written-out norm
    in NCHW (``benchmarks/first_order_kernels.py``); with them in the query passes, MAML's outer
    update ran 1.3x and FOMAML's 1.6x faster (``benchmarks/profile_meta_training.py``).

    A context variable, so each serving thread (and ``asyncio`` task) has its own.
    """
    token = _FIRST_ORDER_KERNELS.set(True)
    try:
        yield
    finally:
        _FIRST_ORDER_KERNELS.reset(token)


def using_first_order_kernels() -> bool:
    """Whether the caller is inside :func:`first_order_kernels`."""
    return _FIRST_ORDER_KERNELS.get()


class SupportStatisticsNorm(torch.autograd.Function):
    """``support_norm(x, weight, bias, n_ref)`` as one autograd node, differentiable once.

    The written-out norm records about ten full-size operations and autograd's backward of them
    (slicing's zero-filled gradients, a negation of the whole tensor for the mean) cost more than
    the convolutions of a Conv4 query pass. Here the forward is one fused eval-mode BatchNorm with
    the support rows' mean and variance, and the backward, with ``x̂ = (x - μ)·r`` and
    ``r = (σ² + ε)^-½`` over the ``m`` support values of a channel, is

    * ``∂b = Σ g``, ``∂w = r·(Σ g·x - μ·Σ g)``, ``∂x = g·w·r`` for every row, then for the
      support rows, through the statistics: ``+ (∂μ + 2·∂σ²·(x - μ)) / m``, where
      ``∂μ = -r·w·∂b`` and ``∂σ² = -½·r²·w·∂w``.

    (``∂σ²/∂μ`` vanishes, since the support rows' deviations from their mean sum to zero.)
    ``once_differentiable``: a graph that would need its second derivative raises instead of
    being wrong.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor, n_ref: int) -> Tensor:
        mean, var = channel_statistics(x[:n_ref])
        ctx.save_for_backward(x, weight, mean, var)
        ctx.n_ref = n_ref
        return F.batch_norm(x, mean, var, weight, bias, training=False, eps=BN_EPS)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        x, weight, mean, var = ctx.saved_tensors
        n_ref = ctx.n_ref
        rstd = torch.rsqrt(var + BN_EPS)
        grad_bias = grad.sum((0, 2, 3))
        grad_weight = ((grad * x).sum((0, 2, 3)) - mean * grad_bias) * rstd
        grad_x = grad * (weight * rstd).view(1, -1, 1, 1)
        count = n_ref * x.shape[2] * x.shape[3]
        grad_mean = -rstd * weight * grad_bias
        grad_var = -0.5 * rstd * rstd * weight * grad_weight
        support = x[:n_ref] - mean.view(1, -1, 1, 1)
        grad_x[:n_ref] += (grad_mean / count).view(1, -1, 1, 1) + (2 * grad_var / count).view(1, -1, 1, 1) * support
        return grad_x, grad_weight, grad_bias, None


def support_norm(x: Tensor, weight: Tensor, bias: Tensor, n_ref: int | None) -> Tensor:
    """BatchNorm over ``x`` with statistics of its first ``n_ref`` rows (all rows if None).

    Written out rather than ``F.batch_norm(training=True)``: MAML differentiates through it twice,
    and the fused kernel's second derivative under ``torch.func.grad`` disagreed with finite
    differences (relative error 7e-5 on the test of tests/test_meta_gradients.py). The statistics
    take two passes (see :func:`channel_statistics`), the centred activations shared with them.
    Under :func:`first_order_kernels`, fused kernels compute it instead.
    """
    if using_first_order_kernels():
        if n_ref is None:
            return F.batch_norm(x, None, None, weight, bias, training=True, eps=BN_EPS)
        return SupportStatisticsNorm.apply(x, weight, bias, n_ref)
    ref = x if n_ref is None else x[:n_ref]
    mean = ref.mean(dim=(0, 2, 3), keepdim=True)
    centred = x - mean
    ref_centred = centred if n_ref is None else centred[:n_ref]
    var = (ref_centred * ref_centred).mean(dim=(0, 2, 3), keepdim=True)
    scale = weight.view(1, -1, 1, 1) * torch.rsqrt(var + BN_EPS)
    return centred * scale + bias.view(1, -1, 1, 1)


class SupportBatchNorm(nn.Module):
    """The affine parameters of a BatchNorm whose statistics come from the support rows.

    With ``states > 0`` the weight and bias hold one row per inner-loop state (MAML++).
    """

    def __init__(self, channels: int, states: int = 0) -> None:
        super().__init__()
        shape = (states, channels) if states else (channels,)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
