"""First-order inner steps and meta-training's query passes run ``first_order_kernels`` (fused
norms; channels-last Conv4 activations on CPU); every other path the written-out norm that MAML can
differentiate twice, in NCHW. Both must compute the same steps and gradients."""

import pytest
import torch
import torch.nn.functional as F
from test_first_step_shortcut import LRS, NETWORKS, WAYS, task
from test_meta_gradients import INNER, params_of, random_batch, tiny_conv4

from fewshot_serve.inner_loop import adapt
from fewshot_serve.networks import first_order_kernels, norms, support_norm
from fewshot_serve.training.meta_learning import meta_gradient


@pytest.fixture
def fused_calls(monkeypatch):
    """How many times the fused kernel ran."""
    calls = []
    fused = F.batch_norm

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(F, "batch_norm", counting)
    return calls


def test_the_norm_is_fused_only_inside_first_order_kernels():
    x, weight, bias = torch.randn(6, 4, 5, 5).requires_grad_(), torch.rand(4) + 0.5, torch.randn(4)
    for n_ref, kernel in ((None, "NativeBatchNorm"), (3, "SupportStatisticsNorm")):
        written_out = support_norm(x, weight, bias, n_ref)
        assert kernel not in type(written_out.grad_fn).__name__
        with first_order_kernels():
            fused = support_norm(x, weight, bias, n_ref)
        assert kernel in type(fused.grad_fn).__name__
        torch.testing.assert_close(fused, written_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("n_ref", [2, 5])
def test_support_statistics_norm_has_the_written_out_gradients_and_passes_gradcheck(layout, n_ref):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64) * 2 + 1).contiguous(memory_format=layout)
    weight = torch.rand(3, generator=g, dtype=torch.float64) + 0.5
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
    upstream = torch.randn(x.shape, generator=g, dtype=torch.float64)
    fused = norms.SupportStatisticsNorm.apply(*inputs, n_ref)
    written_out = support_norm(*inputs, n_ref)
    torch.testing.assert_close(fused, written_out, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(fused, inputs, upstream), torch.autograd.grad(written_out, inputs, upstream)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *t: norms.SupportStatisticsNorm.apply(*t, n_ref), inputs)


def test_support_statistics_norm_refuses_a_second_derivative():
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.ones(2, dtype=torch.float64, requires_grad=True)
    out = norms.SupportStatisticsNorm.apply(x, weight, torch.zeros(2, dtype=torch.float64), 2)
    (grad,) = torch.autograd.grad((out * out).sum(), weight, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):  # an error, not a second derivative of zero
        grad.sum().backward()


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_training_query_passes_run_the_fused_norm_and_keep_the_meta_gradient(first_order, monkeypatch):
    calls = []
    fused = norms.SupportStatisticsNorm.apply
    monkeypatch.setattr(norms.SupportStatisticsNorm, "apply", lambda *args: calls.append(1) or fused(*args))
    network, batch = tiny_conv4(), random_batch()
    theta = params_of(network)
    looped, loss_l, _ = meta_gradient(network, theta, batch, INNER, first_order, vectorize=False)
    assert len(calls) == 4 * len(batch.x_support), "each task's query pass should normalize with the fused kernel"
    calls.clear()
    written_out, loss_w, _ = meta_gradient(network, theta, batch, INNER, first_order, vectorize=True)  # torch.func
    assert not calls, "a pass under torch.func used the once-differentiable kernel"
    assert loss_l.item() == pytest.approx(loss_w.item(), rel=1e-10)
    for key in theta:
        torch.testing.assert_close(looped[key], written_out[key], rtol=1e-9, atol=1e-12, msg=key)


@pytest.mark.parametrize("name", ["conv4", "conv4 MAML++", "resnet12"])
def test_first_order_steps_with_the_fused_norm_equal_the_written_out_steps(name, fused_calls):
    network = NETWORKS[name]()
    xs, ys, _, _ = task(network.config().get("in_channels", 1))
    start = network.task_parameters({k: v.detach() for k, v in network.named_parameters()}, WAYS)
    fused = adapt(network, start, xs, ys, LRS, 3, first_order=True)
    assert fused_calls, "the first-order loop did not use the fused norm"
    calls = len(fused_calls)
    # the composable (torch.func) path keeps the written-out norm: the reference
    written_out = adapt(network, start, xs, ys, LRS, 3, first_order=True, composable=True)
    second_order = adapt(network, start, xs, ys, LRS, 3)
    assert len(fused_calls) == calls, "a path that may be differentiated twice used the fused norm"
    for key, value in written_out.params.items():
        torch.testing.assert_close(fused.params[key], value, rtol=1e-9, atol=1e-10, msg=key)
        torch.testing.assert_close(second_order.params[key].detach(), value, rtol=1e-9, atol=1e-10, msg=key)
    torch.testing.assert_close(fused.support_losses, written_out.support_losses, rtol=1e-9, atol=1e-10)
