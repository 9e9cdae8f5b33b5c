"""Properties serving relies on: any number of classes, class-order invariance, query independence."""

import pytest
import torch
import torch.nn.functional as F

from fewshot_serve.inner_loop import adapt, predict
from fewshot_serve.networks import Conv4, build_network, conv4


def adapted_probabilities(network, x_support, y_support, x_query, ways, steps=3):
    meta = {k: v.detach() for k, v in network.named_parameters()}
    params = adapt(network, network.task_parameters(meta, ways), x_support, y_support, (0.4,), steps, True).params
    return predict(network, params, x_support, x_query).softmax(-1)


@pytest.fixture
def network():
    torch.manual_seed(0)
    net = Conv4(1, 8, 16).double()
    with torch.no_grad():
        net.head.weight.normal_(0, 0.3)
    return net


@pytest.mark.parametrize("ways", [2, 3, 7, 20])
def test_any_number_of_classes(network, ways):
    x = torch.randn(ways * 2, 1, 16, 16, dtype=torch.float64)
    y = torch.arange(ways).repeat_interleave(2)
    probabilities = adapted_probabilities(network, x, y, torch.randn(4, 1, 16, 16, dtype=torch.float64), ways)
    assert probabilities.shape == (4, ways)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(4, dtype=torch.float64))


def test_predictions_do_not_depend_on_class_order(network):
    g = torch.Generator().manual_seed(1)
    ways = 5
    x = torch.randn(ways * 2, 1, 16, 16, generator=g, dtype=torch.float64)
    y = torch.arange(ways).repeat_interleave(2)
    queries = torch.randn(6, 1, 16, 16, generator=g, dtype=torch.float64)
    original = adapted_probabilities(network, x, y, queries, ways)
    permutation = torch.tensor([3, 0, 4, 1, 2])  # class c is now called permutation[c]
    order = torch.randperm(len(y), generator=g)  # and the support images come in another order
    permuted = adapted_probabilities(network, x[order], permutation[y][order], queries, ways)
    torch.testing.assert_close(permuted[:, permutation], original, rtol=1e-9, atol=1e-12)
    assert (original.max(-1).values - original.min(-1).values > 0.05).all()  # not trivially uniform


def test_untrained_head_row_is_not_order_invariant_by_accident():
    """Guard for the test above: with distinct head rows, order would matter."""
    torch.manual_seed(0)
    network = Conv4(1, 8, 16).double()
    meta = {k: v.detach() for k, v in network.named_parameters()}
    start = network.task_parameters(meta, 3)
    start["head.weight"] = torch.randn_like(start["head.weight"])
    x = torch.randn(6, 1, 16, 16, dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(2)
    a = predict(network, adapt(network, start, x, y, (0.4,), 1, True).params, x, x).softmax(-1)
    perm = torch.tensor([1, 2, 0])
    b = predict(network, adapt(network, start, x, perm[y], (0.4,), 1, True).params, x, x).softmax(-1)
    assert not torch.allclose(b[:, perm], a)


def test_a_query_prediction_does_not_depend_on_the_other_queries(network):
    x = torch.randn(6, 1, 16, 16, dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(2)
    queries = torch.randn(5, 1, 16, 16, dtype=torch.float64)
    together = adapted_probabilities(network, x, y, queries, 3)
    alone = torch.cat([adapted_probabilities(network, x, y, q[None], 3) for q in queries])
    torch.testing.assert_close(together, alone)


def test_build_network_round_trips_config_and_rejects_unknown():
    network = Conv4(3, 32, 32)
    assert build_network(network.config()).config() == network.config()
    assert network.feature_dim == 32 * 2 * 2
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network({"architecture": "resnet"})


def test_pooling_before_relu_is_the_textbook_block_in_value_and_gradients(monkeypatch):
    """Conv4 pools before its ReLU (cheaper); the textbook order, ReLU then pool, must give the same
    features, the same gradients, and the same second derivatives (MAML differentiates twice)."""
    torch.manual_seed(0)
    network = Conv4(in_channels=1, filters=8, image_size=28)
    params = {k: v.detach().requires_grad_() for k, v in network.named_parameters() if k.startswith("blocks.")}
    x = torch.randn(6, 1, 28, 28)

    def second_order() -> list[torch.Tensor]:
        """Features, their loss's gradient, and the gradient of that gradient's squared length."""
        features = network.head_input(params, x, 4)
        loss = (features * torch.linspace(-1, 1, features.shape[1])).sum()
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        curvature = torch.autograd.grad(sum((g * g).sum() for g in grads), list(params.values()))
        return [features, *grads, *curvature]

    ours = second_order()
    monkeypatch.setattr(conv4, "relu_and_pool", lambda h: F.max_pool2d(F.relu(h), 2))
    for mine, textbook in zip(ours, second_order(), strict=True):
        torch.testing.assert_close(mine, textbook, rtol=1e-5, atol=1e-6)
