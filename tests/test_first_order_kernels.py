"""First-order inner steps run ``first_order_kernels`` (PyTorch's fused BatchNorm; channels-last Conv4
activations on CPU); every other path the written-out norm that MAML can differentiate twice, in NCHW.
Both must take the same steps."""

import pytest
import torch
import torch.nn.functional as F

from fewshot_serve.inner_loop import adapt
from fewshot_serve.networks import first_order_kernels, support_norm

from test_first_step_shortcut import LRS, NETWORKS, WAYS, task


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


def test_the_norm_is_fused_only_inside_first_order_kernels_and_over_whole_batches():
    x, weight, bias = torch.randn(6, 4, 5, 5), torch.rand(4) + 0.5, torch.randn(4)
    written_out = support_norm(x, weight, bias, None)
    with first_order_kernels():
        fused = support_norm(x.requires_grad_(), weight, bias, None)
        assert "NativeBatchNorm" in type(fused.grad_fn).__name__
        # statistics of the first rows only (support rows of a support + query batch): written out
        assert "NativeBatchNorm" not in type(support_norm(x, weight, bias, 3).grad_fn).__name__
    torch.testing.assert_close(fused, written_out, rtol=1e-5, atol=1e-5)


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
