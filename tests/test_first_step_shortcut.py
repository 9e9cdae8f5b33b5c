"""The first inner step from a shared head row, taken through the head alone, against the plain step
through the whole network: same adapted weights, same support losses, same second-order gradients."""

import pytest
import torch
from test_maml_plus_plus import tiny_maml_plus_plus
from test_meta_gradients import tiny_conv4
from test_resnet12 import tiny_resnet

from fewshot_serve.inner_loop import adapt, predict
from fewshot_serve.networks import Conv4

WAYS, SHOTS, QUERIES = 3, 2, 2
LRS = (0.3, 0.2)


def task(channels: int):
    g = torch.Generator().manual_seed(4)
    labels = lambda per: torch.arange(WAYS).repeat_interleave(per)  # noqa: E731
    return (torch.randn(WAYS * SHOTS, channels, 16, 16, generator=g, dtype=torch.float64), labels(SHOTS),
            torch.randn(WAYS * QUERIES, channels, 16, 16, generator=g, dtype=torch.float64), labels(QUERIES))


NETWORKS = {
    "conv4": lambda: tiny_conv4(),
    "conv4 MAML++": lambda: tiny_maml_plus_plus(),
    "resnet12": lambda: tiny_resnet(lr_steps=2),
    "resnet12 head only": lambda: tiny_resnet(norm="fixed", adapt_from=4, lr_steps=2),
}


def query_loss(network, meta, data, shortcut, composable, steps=2):
    xs, ys, xq, yq = data
    start = network.task_parameters(meta, WAYS)
    if composable:
        adaptation = adapt(network, start, xs, ys, LRS, steps, composable=True, head_first_step=shortcut)
    else:
        adaptation = adapt(network, start, xs, ys, LRS, steps, head_first_step=shortcut)
    return network.loss(predict(network, adaptation.params, xs, xq), yq), adaptation


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("composable", [False, True])
def test_shortcut_gives_the_plain_steps_and_second_order_gradients(name, composable):
    network = NETWORKS[name]()
    data = task(network.config().get("in_channels", 1))
    meta = {k: v.detach().clone() for k, v in network.named_parameters()}
    results = []
    for shortcut in (True, False):
        if composable:
            def loss_of(params):
                loss, adaptation = query_loss(network, params, data, shortcut, composable=True)
                return loss, (loss, adaptation.support_losses)
            grads, (loss, support_losses) = torch.func.grad(loss_of, has_aux=True)(meta)
        else:
            params = {k: v.clone().requires_grad_() for k, v in meta.items()}
            loss, adaptation = query_loss(network, params, data, shortcut, composable=False)
            grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
            support_losses = adaptation.support_losses
        results.append((loss, support_losses, grads))
    (loss, losses, grads), (plain_loss, plain_losses, plain_grads) = results
    torch.testing.assert_close(loss, plain_loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(losses, plain_losses, rtol=1e-12, atol=1e-14)
    assert plain_grads.keys() == grads.keys()
    for key in grads:
        torch.testing.assert_close(grads[key], plain_grads[key], rtol=1e-9, atol=1e-12, msg=key)
    body = [i for i, k in enumerate(network.fast_weight_names()) if k not in network.head_keys]
    if network.lr_steps and body:  # what the plain path gets only up to rounding is exactly zero by construction
        assert torch.count_nonzero(grads["step_lrs"][body, 0]) == 0
        assert torch.count_nonzero(grads["step_lrs"][body, 1]) > 0


@pytest.mark.parametrize("first_order", [True, False])
def test_shortcut_leaves_the_body_exactly_unmoved_after_one_step(first_order):
    network = tiny_conv4()
    xs, ys, _, _ = task(1)
    meta = {k: v.detach().clone().requires_grad_(not first_order) for k, v in network.named_parameters()}
    start = network.task_parameters(meta, WAYS)
    shortcut = adapt(network, start, xs, ys, LRS, 1, first_order=first_order)
    plain = adapt(network, start, xs, ys, LRS, 1, first_order=first_order, head_first_step=False)
    for key in network.fast_weight_names():
        if key in network.head_keys:
            torch.testing.assert_close(shortcut.params[key], plain.params[key], rtol=1e-12, atol=1e-14)
        else:
            assert torch.equal(shortcut.params[key], start[key])
            torch.testing.assert_close(plain.params[key], start[key], rtol=0, atol=1e-12)
    assert not torch.equal(shortcut.params["head.weight"], start["head.weight"])  # (balanced classes: no bias step)


def test_a_network_without_shared_head_takes_the_plain_path():
    from fewshot_serve.networks import SinusoidMLP

    network = SinusoidMLP().double()
    assert network.head_keys == ()
    x = torch.linspace(-5, 5, 10, dtype=torch.float64).unsqueeze(1)
    y = torch.sin(x)
    params = {k: v.detach() for k, v in network.named_parameters()}
    moved = adapt(network, params, x, y, (0.01,), 1)
    assert all(not torch.equal(moved.params[k], params[k]) for k in params)


def test_conv4_head_input_and_head_compose_to_the_forward():
    network = Conv4(1, 3, 16).double()
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    params = dict(network.named_parameters())
    logits = network.head_logits(params, network.head_input(params, x))
    torch.testing.assert_close(logits, network.apply_params(params, x))
