"""The three outer updates, checked against independent references."""

import pytest
import torch
import torch.nn.functional as F

from fewshot_serve.data.episodes import TaskBatch
from fewshot_serve.inner_loop import InnerLoop
from fewshot_serve.networks import Conv4, SinusoidMLP
from fewshot_serve.training.meta_learning import MetaLearner, meta_gradient, reptile_displacement

WAYS, SHOTS, QUERIES, TASKS = 3, 2, 2, 3
INNER = InnerLoop(inner_lrs=(0.3, 0.2), train_steps=2, test_steps=2)


def tiny_conv4(dtype=torch.float64) -> Conv4:
    torch.manual_seed(0)
    network = Conv4(in_channels=1, filters=3, image_size=16).to(dtype)
    with torch.no_grad():  # a non-zero shared head row, so every term of the gradient is exercised
        network.head.weight.normal_(0, 0.5)
        network.head.bias.fill_(0.1)
    return network


def random_batch(dtype=torch.float64, tasks=TASKS, seed=1) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    labels = lambda per: torch.arange(WAYS).repeat_interleave(per).repeat(tasks, 1)  # noqa: E731
    return TaskBatch(
        torch.randn(tasks, WAYS * SHOTS, 1, 16, 16, generator=g, dtype=dtype),
        labels(SHOTS),
        torch.randn(tasks, WAYS * QUERIES, 1, 16, 16, generator=g, dtype=dtype),
        labels(QUERIES),
        WAYS,
    )


def params_of(network):
    return {k: v.detach().clone() for k, v in network.named_parameters()}


# --- an independent reference: module-free SGD with plain torch.autograd -------------------------


def reference_forward(params, x, n_ref):
    """Conv4 written out by hand, BN statistics from the first n_ref rows."""
    for i in range(4):
        x = F.conv2d(x, params[f"blocks.{i}.conv.weight"], params[f"blocks.{i}.conv.bias"], padding=1)
        ref = x[:n_ref]
        mean = ref.mean((0, 2, 3), keepdim=True)
        var = ref.var((0, 2, 3), unbiased=False, keepdim=True)
        x = (x - mean) / torch.sqrt(var + 1e-5)
        x = x * params[f"blocks.{i}.norm.weight"].view(1, -1, 1, 1) + params[f"blocks.{i}.norm.bias"].view(1, -1, 1, 1)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), params["head.weight"], params["head.bias"])


def reference_query_loss(meta, task, create_graph):
    xs, ys, xq, yq = task
    p = {k: (v.repeat(WAYS, *([1] * (v.dim() - 1))) if k.startswith("head") else v) for k, v in meta.items()}
    for step in range(INNER.train_steps):
        loss = F.cross_entropy(reference_forward(p, xs, len(xs)), ys)
        grads = torch.autograd.grad(loss, list(p.values()), create_graph=create_graph)
        p = {k: v - INNER.inner_lrs[step] * g for (k, v), g in zip(p.items(), grads)}
    logits = reference_forward(p, torch.cat([xs, xq]), len(xs))[len(xs):]
    return F.cross_entropy(logits, yq), p


def tasks_of(batch):
    return list(zip(batch.x_support, batch.y_support, batch.x_query, batch.y_query))


# --- MAML ------------------------------------------------------------------------------------------


def test_maml_meta_gradient_matches_central_finite_differences():
    network, batch = tiny_conv4(), random_batch()
    theta = params_of(network)
    grads, loss, _ = meta_gradient(network, theta, batch, INNER, first_order=False)

    def meta_loss(params):
        return meta_gradient(network, params, batch, INNER, first_order=False)[1].item()

    g = torch.Generator().manual_seed(7)
    eps = 1e-7  # ReLU and max-pool make the loss piecewise smooth: keep steps inside one piece
    for _ in range(3):  # random directions through all parameters
        direction = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in theta.items()}
        plus = meta_loss({k: theta[k] + eps * direction[k] for k in theta})
        minus = meta_loss({k: theta[k] - eps * direction[k] for k in theta})
        numeric = (plus - minus) / (2 * eps)
        analytic = sum((grads[k] * direction[k]).sum() for k in theta).item()
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    for key in ("blocks.0.conv.weight", "blocks.2.norm.bias", "head.weight", "head.bias"):  # single coordinates
        index = (0,) * theta[key].dim()
        bump = torch.zeros_like(theta[key])
        bump[index] = eps
        plus = meta_loss({**theta, key: theta[key] + bump})
        minus = meta_loss({**theta, key: theta[key] - bump})
        assert grads[key][index].item() == pytest.approx((plus - minus) / (2 * eps), rel=1e-5, abs=1e-8)


def test_maml_meta_gradient_matches_plain_autograd_reference():
    network, batch = tiny_conv4(), random_batch()
    theta = params_of(network)
    grads, loss, _ = meta_gradient(network, theta, batch, INNER, first_order=False)
    meta = {k: v.clone().requires_grad_() for k, v in theta.items()}
    total = sum(reference_query_loss(meta, task, create_graph=True)[0] for task in tasks_of(batch)) / TASKS
    expected = torch.autograd.grad(total, list(meta.values()))
    assert loss.item() == pytest.approx(total.item(), rel=1e-10)
    for key, reference in zip(meta, expected):
        torch.testing.assert_close(grads[key], reference, rtol=1e-8, atol=1e-10)


# --- FOMAML ----------------------------------------------------------------------------------------


def test_fomaml_gradient_is_query_gradient_at_adapted_parameters_and_differs_from_maml():
    network, batch = tiny_conv4(), random_batch()
    theta = params_of(network)
    fomaml, _, _ = meta_gradient(network, theta, batch, INNER, first_order=True)
    maml, _, _ = meta_gradient(network, theta, batch, INNER, first_order=False)

    expected = {k: torch.zeros_like(v) for k, v in theta.items()}
    for task in tasks_of(batch):
        meta = {k: v.clone().requires_grad_() for k, v in theta.items()}
        _, adapted = reference_query_loss(meta, task, create_graph=False)
        adapted = {k: v.detach().requires_grad_() for k, v in adapted.items()}
        xs, _, xq, yq = task
        query_loss = F.cross_entropy(reference_forward(adapted, torch.cat([xs, xq]), len(xs))[len(xs):], yq)
        for key, g in zip(adapted, torch.autograd.grad(query_loss, list(adapted.values()))):
            # a head row copied per class collects the gradient of every copy
            expected[key] += (g.sum(0, keepdim=True) if key.startswith("head") else g) / TASKS
    for key in theta:
        torch.testing.assert_close(fomaml[key], expected[key], rtol=1e-8, atol=1e-10)
    difference = max((maml[k] - fomaml[k]).abs().max().item() for k in theta)
    assert difference > 1e-3, "MAML's second-order terms vanished: it equals FOMAML"


# --- Reptile ---------------------------------------------------------------------------------------


def test_reptile_update_equals_formula():
    network, batch = tiny_conv4(), random_batch()
    theta = params_of(network)
    learner = MetaLearner(network, "reptile", INNER, meta_lr=0.7, iterations=10)
    iteration = 4
    learner.step(batch, iteration)
    epsilon = 0.7 * (1 - iteration / 10)
    for key in theta:
        mean_delta = torch.zeros_like(theta[key])
        for task in tasks_of(batch):
            meta = {k: v.clone().requires_grad_() for k, v in theta.items()}
            _, adapted = reference_query_loss(meta, task, create_graph=False)
            delta = adapted[key].detach() - meta[key].detach()
            mean_delta += (delta.mean(0, keepdim=True) if key.startswith("head") else delta) / TASKS
        torch.testing.assert_close(network.state_dict()[key], theta[key] + epsilon * mean_delta, rtol=1e-8, atol=1e-10)
    assert any((network.state_dict()[k] - theta[k]).abs().max() > 1e-4 for k in theta)


def test_reptile_step_size_anneals_linearly_to_zero():
    learner = MetaLearner(tiny_conv4(), "reptile", INNER, meta_lr=1.0, iterations=100)
    assert [learner.reptile_step_size(i) for i in (0, 50, 99)] == pytest.approx([1.0, 0.5, 0.01])


# --- vmap == loop ----------------------------------------------------------------------------------


@pytest.mark.parametrize("first_order", [False, True])
def test_vectorized_and_looped_meta_gradients_agree(first_order):
    network, batch = tiny_conv4(), random_batch()
    theta = params_of(network)
    vectorized, loss_v, metric_v = meta_gradient(network, theta, batch, INNER, first_order, vectorize=True)
    looped, loss_l, metric_l = meta_gradient(network, theta, batch, INNER, first_order, vectorize=False)
    assert loss_v.item() == pytest.approx(loss_l.item(), rel=1e-10)
    assert metric_v.item() == metric_l.item()
    for key in theta:
        torch.testing.assert_close(vectorized[key], looped[key], rtol=1e-9, atol=1e-12)


def test_vectorized_and_looped_reptile_agree():
    network, batch = tiny_conv4(), random_batch()
    theta = params_of(network)
    vectorized, _, _ = reptile_displacement(network, theta, batch, INNER, vectorize=True)
    looped, _, _ = reptile_displacement(network, theta, batch, INNER, vectorize=False)
    for key in theta:
        torch.testing.assert_close(vectorized[key], looped[key], rtol=1e-9, atol=1e-12)


def test_maml_on_regression_network_matches_finite_differences():
    torch.manual_seed(0)
    network = SinusoidMLP(hidden=8).double()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 10, 1, generator=g, dtype=torch.float64) * 10 - 5
    batch = TaskBatch(x[:, :5], torch.sin(x[:, :5]), x[:, 5:], torch.sin(x[:, 5:]), 1)
    theta = params_of(network)
    grads, _, _ = meta_gradient(network, theta, batch, INNER, first_order=False)
    direction = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in theta.items()}
    eps = 1e-6
    loss = lambda p: meta_gradient(network, p, batch, INNER, first_order=False)[1].item()  # noqa: E731
    numeric = (loss({k: theta[k] + eps * direction[k] for k in theta})
               - loss({k: theta[k] - eps * direction[k] for k in theta})) / (2 * eps)
    assert sum((grads[k] * direction[k]).sum() for k in theta).item() == pytest.approx(numeric, rel=1e-6)
