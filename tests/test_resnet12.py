"""ResNet-12: an independent reference forward, the frozen/adapted split, folding of norm statistics,
MAML's meta-gradient through it (finite differences), the frozen-body cache, serving and ONNX."""

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_onnx_export_agrees

from fewshot_serve.data.episodes import TaskBatch
from fewshot_serve.files.model_file import ModelFileError, Recipe, load_model, save_model
from fewshot_serve.inner_loop import InnerLoop, adapt, predict
from fewshot_serve.networks import ResNet12, fixed_norm_params
from fewshot_serve.training.frozen_body import AdaptedPart, CachedEpisodes
from fewshot_serve.training.meta_learning import meta_gradient

WIDTHS = (3, 4, 5, 6)
WAYS, SHOTS, QUERIES = 3, 2, 2


def tiny_resnet(norm="support", adapt_from=0, dtype=torch.float64, lr_steps=0, centred=False,
                prototype_head=False) -> ResNet12:
    torch.manual_seed(0)
    network = ResNet12(3, WIDTHS, 16, norm=norm, adapt_from=adapt_from, lr_steps=lr_steps, centred=centred,
                       prototype_head=prototype_head).to(dtype)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-trivial values everywhere, so every term of every gradient is exercised
        if centred:
            network.set_feature_centre(0.3 * torch.randn(WIDTHS[-1], generator=g, dtype=dtype))
        network.head.weight.normal_(0, 0.5, generator=g)
        network.head.bias.fill_(0.1)
        network.logit_scale.fill_(2.0)
        if lr_steps:
            network.step_lrs.copy_(0.1 + 0.3 * torch.rand(network.step_lrs.shape, generator=g, dtype=dtype))
        for name, param in network.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn(param.shape, generator=g, dtype=dtype))
    return network


def params_of(network):
    return {k: v.detach().clone() for k, v in network.named_parameters()}


def reference_forward(params, x, norm_stats, centre=None):
    """ResNet-12 written out by hand; ``norm_stats(key, h)`` gives each norm's (mean, var)."""
    def conv_norm(prefix, conv, norm, h, padding):
        h = F.conv2d(h, params[f"{prefix}{conv}.weight"], padding=padding)
        mean, var = norm_stats(prefix + norm, h)
        shape = (1, -1, 1, 1)
        return (h - mean.view(shape)) / torch.sqrt(var.view(shape) + 1e-5) * params[f"{prefix}{norm}.weight"].view(
            shape) + params[f"{prefix}{norm}.bias"].view(shape)

    for i in range(4):
        p = f"blocks.{i}."
        h = F.leaky_relu(conv_norm(p, "conv1", "norm1", x, 1), 0.1)
        h = F.leaky_relu(conv_norm(p, "conv2", "norm2", h, 1), 0.1)
        h = conv_norm(p, "conv3", "norm3", h, 1) + conv_norm(p, "shortcut", "shortcut_norm", x, 0)
        x = F.max_pool2d(F.leaky_relu(h, 0.1), 2)
    features = x.mean((2, 3)) - (0 if centre is None else centre)
    features = features / features.norm(dim=1, keepdim=True)
    return params["logit_scale"] * (features @ params["head.weight"].T + params["head.bias"])


def batch_statistics(n_ref):
    return lambda key, h: (h[:n_ref].mean((0, 2, 3)), h[:n_ref].var((0, 2, 3), unbiased=False))


def images(n, seed=1, dtype=torch.float64):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("adapt_from", [0, 2, 4])
def test_forward_matches_reference_and_frozen_then_adapted_part(adapt_from):
    network = tiny_resnet(adapt_from=adapt_from)
    params, x = params_of(network), images(7)
    expected = reference_forward(params, x, batch_statistics(4))
    torch.testing.assert_close(network.apply_params(params, x, 4), expected, rtol=1e-10, atol=1e-12)
    split = network.adapted_part(params, network.frozen_part(params, x, 4), 4)
    torch.testing.assert_close(split, expected, rtol=1e-10, atol=1e-12)
    adapted_blocks = {name.split(".")[1] for name in network.fast_weight_names() if name.startswith("blocks.")}
    assert adapted_blocks == {str(i) for i in range(adapt_from, 4)}
    assert "logit_scale" not in network.fast_weight_names() and "head.weight" in network.fast_weight_names()


@pytest.mark.parametrize("adapt_from", [0, 4])
def test_centred_features_subtract_the_centre_before_normalizing(adapt_from):
    network = tiny_resnet(adapt_from=adapt_from, centred=True)
    params, x = params_of(network), images(7)
    assert "feature_centre" not in params  # a constant of the file: never trained, never adapted
    expected = reference_forward(params, x, batch_statistics(4), network.feature_centre)
    torch.testing.assert_close(network.apply_params(params, x, 4), expected, rtol=1e-10, atol=1e-12)
    uncentred = reference_forward(params, x, batch_statistics(4))
    assert (network.apply_params(params, x, 4) - uncentred).abs().max() > 1e-3
    assert network.config()["centred"] is True and "centred" not in tiny_resnet().config()
    with pytest.raises(ValueError, match="centred=True"):
        tiny_resnet().set_feature_centre(torch.zeros(WIDTHS[-1], dtype=torch.float64))


def test_folded_running_statistics_equal_eval_mode_batchnorm():
    network = tiny_resnet()
    running = network.running_statistics()
    g = torch.Generator().manual_seed(4)
    for mean, var in running.values():
        mean.copy_(torch.randn(mean.shape, generator=g))
        var.copy_(0.5 + torch.rand(var.shape, generator=g))
    params, x = params_of(network), images(5)
    fixed = ResNet12(3, WIDTHS, 16, norm="fixed").double()
    folded = fixed_norm_params(network, params, running)
    expected = reference_forward(params, x, lambda key, h: running[key])
    torch.testing.assert_close(fixed.apply_params(folded, x), expected, rtol=1e-10, atol=1e-12)


def test_pretraining_forward_updates_running_statistics_towards_the_batch():
    network = tiny_resnet()
    running = network.running_statistics()
    x = images(8)
    for _ in range(300):  # momentum 0.1: the running mean converges to the batch's
        network.embed(params_of(network), x, running=running)
    mean, _ = running["blocks.0.norm1"]
    h = F.conv2d(x, network.blocks[0].conv1.weight.detach(), padding=1)
    torch.testing.assert_close(mean, h.mean((0, 2, 3)), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("norm, centred, prototype_head",
                         [("support", False, False), ("fixed", False, False), ("fixed", True, False),
                          ("fixed", True, True)])
def test_frozen_classifier_equals_predict(norm, centred, prototype_head):
    network = tiny_resnet(norm=norm, centred=centred, prototype_head=prototype_head)
    assert_frozen_classifier_equals_predict(network, images(WAYS * SHOTS, 2), images(5, 3), steps=3)


def assert_frozen_classifier_equals_predict(network, xs, xq, steps) -> None:
    """``network`` adapted to support ``xs`` (``SHOTS`` of each of ``WAYS`` classes) for ``steps`` steps, then
    frozen for serving, must give ``xq`` the logits :func:`predict` gives."""
    ys = torch.arange(WAYS).repeat_interleave(SHOTS)
    start = network.task_parameters(params_of(network), WAYS)
    params = adapt(network, start, xs, ys, (0.3,), steps, first_order=True).params
    expected = predict(network, params, xs, xq)
    torch.testing.assert_close(network.fold(params, xs)(xq), expected, rtol=1e-9, atol=1e-11)


def second_order_batch(tasks=2, dtype=torch.float64):
    labels = lambda per: torch.arange(WAYS).repeat_interleave(per).repeat(tasks, 1)  # noqa: E731
    return TaskBatch(images(tasks * WAYS * SHOTS, 5).view(tasks, WAYS * SHOTS, 3, 16, 16), labels(SHOTS),
                     images(tasks * WAYS * QUERIES, 6).view(tasks, WAYS * QUERIES, 3, 16, 16), labels(QUERIES), WAYS)


INNER = InnerLoop(inner_lrs=(0.3, 0.2), train_steps=2, test_steps=2)


def assert_meta_gradient_matches_central_differences(network, theta, batch, eps=1e-6, along=None
                                                    ) -> tuple[dict, torch.Tensor]:
    """Second-order MAML's meta-gradient of ``network`` at ``theta`` against central finite differences of
    its meta-loss along a random direction (steps of ``eps``; only the parameters ``along`` selects, if
    given); returns the gradient and the loss."""
    grads, loss, _ = meta_gradient(network, theta, batch, INNER, first_order=False, vectorize=False)

    def meta_loss(params):
        return meta_gradient(network, params, batch, INNER, first_order=False, vectorize=False)[1].item()

    g = torch.Generator().manual_seed(11)
    direction = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) * (along is None or along(k))
                 for k, v in theta.items()}
    plus = meta_loss({k: theta[k] + eps * direction[k] for k in theta})
    minus = meta_loss({k: theta[k] - eps * direction[k] for k in theta})
    analytic = sum((grads[k] * direction[k]).sum() for k in theta).item()
    assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=1e-6, abs=1e-9)
    return grads, loss


def assert_cached_frozen_part_gives_the_same_meta_gradient(network, theta, batch, grads, loss,
                                                           meta_learned_from=None) -> set[str]:
    """What ``--freeze-body`` meta-learns on: the frozen part's output cached once per image must give
    the adapted part the whole network's loss and meta-gradient (``grads``, ``loss``). Returns the
    adapted part's parameter names. ``meta_learned_from``: cache only the units before it (texts)."""
    part = AdaptedPart(network, meta_learned_from)
    names = set(dict(part.named_parameters()))
    cache = lambda xs: torch.stack([part.cached_input(theta, x) for x in xs])  # noqa: E731
    cached = batch._replace(x_support=cache(batch.x_support), x_query=cache(batch.x_query))
    part_grads, cached_loss, _ = meta_gradient(part, {k: theta[k] for k in names}, cached, INNER, first_order=False,
                                               vectorize=False)
    assert cached_loss.item() == pytest.approx(loss.item(), rel=1e-12)
    for key, grad in part_grads.items():
        torch.testing.assert_close(grad, grads[key], rtol=1e-9, atol=1e-12)
    return names


@pytest.mark.parametrize("adapt_from, prototype_head", [(0, False), (3, False), (3, True)])
def test_maml_meta_gradient_matches_central_finite_differences(adapt_from, prototype_head):
    network = tiny_resnet(adapt_from=adapt_from, lr_steps=2, prototype_head=prototype_head)
    batch = second_order_batch()
    theta = params_of(network)
    grads, _ = assert_meta_gradient_matches_central_differences(network, theta, batch)
    if prototype_head:  # the vectorized meta-batch (torch.func) takes the same steps
        vectorized, _, _ = meta_gradient(network, theta, batch, INNER, first_order=False, vectorize=True)
        for key, grad in grads.items():
            torch.testing.assert_close(vectorized[key], grad, rtol=1e-9, atol=1e-12)
    for key in ("logit_scale", "blocks.0.conv1.weight", "step_lrs"):
        assert grads[key].abs().max() > 1e-6, key  # frozen blocks still get the query loss's gradient


def test_frozen_body_cache_gives_the_whole_networks_meta_gradient_for_the_adapted_part():
    network, batch = tiny_resnet(norm="fixed", adapt_from=3), second_order_batch()
    theta = params_of(network)
    whole, loss, _ = meta_gradient(network, theta, batch, INNER, first_order=False, vectorize=False)
    names = assert_cached_frozen_part_gives_the_same_meta_gradient(network, theta, batch, whole, loss)
    assert names == {k for k in theta if not k.startswith(("blocks.0", "blocks.1", "blocks.2"))}


def test_cached_episodes_are_the_image_episodes(glyph_tree):
    from fewshot_serve.data.datasets import load_folder_tree
    from fewshot_serve.data.episodes import ImageEpisodes
    from fewshot_serve.preprocessing import Preprocessing

    preprocessing = Preprocessing(16, 1, True, "pad", (0.0,), (1.0,))
    classes = load_folder_tree(glyph_tree, preprocessing)
    sampler = ImageEpisodes(classes, preprocessing, 4, 2, 3)
    table = classes.images.float().flatten(1)  # "features": the images themselves
    cached = CachedEpisodes(sampler, table).sample(torch.Generator().manual_seed(9), 3, "cpu")
    plain = sampler.sample(torch.Generator().manual_seed(9), 3, "cpu")
    raw = [sampler.sample_uint8(g) for g in [torch.Generator().manual_seed(9)] for _ in range(3)]
    torch.testing.assert_close(cached.x_support, torch.stack([r[0].float().flatten(1) for r in raw]))
    torch.testing.assert_close(cached.x_query, torch.stack([r[2].float().flatten(1) for r in raw]))
    assert torch.equal(cached.y_query, plain.y_query)


def recipe_for(network):
    from fewshot_serve.preprocessing import Preprocessing

    return Recipe(network=network.config(), preprocessing=Preprocessing(16, 3, False, "squash", (0.5,) * 3,
                                                                       (0.25,) * 3).to_dict(),
                  inner_lrs=[0.5], train_steps=3, test_steps=3, algorithm="fomaml", dataset="tiny-imagenet", ways=5,
                  shots=1, queries=15)


@pytest.mark.parametrize("centred, prototype_head", [(False, False), pytest.param(True, False, marks=pytest.mark.slow),
                                                     pytest.param(True, True, marks=pytest.mark.slow)])
def test_model_file_round_trip_serving_and_onnx(tmp_path, centred, prototype_head):
    import fewshot_serve

    network = tiny_resnet(norm="fixed", adapt_from=3, dtype=torch.float32, centred=centred,
                          prototype_head=prototype_head)
    path = tmp_path / "photos.safetensors"
    save_model(path, network, recipe_for(network))
    loaded, recipe = load_model(path)
    assert recipe.network["architecture"] == "resnet12" and loaded.adapt_from == 3
    assert loaded.prototype_head == prototype_head
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    model = fewshot_serve.load(path, "cpu")
    rng = np.random.default_rng(0)
    support = {c: [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(2)] for c in "abc"}
    adapted = model.adapt(support)
    queries = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(4)]
    onnx_path = tmp_path / "task.onnx"
    assert_onnx_export_agrees(adapted, queries, adapted.classify(queries), onnx_path)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 16, 16]


@pytest.mark.parametrize("change, message", [
    ({"widths": [4, 4, 4]}, "4 widths"),
    ({"norm": "group"}, "norm in"),
    ({"adapt_from": 7}, "adapt_from in"),
    ({"depth": 12}, "needs exactly"),
    ({"centred": 1}, "centred and prototype_head true or false"),
    ({"prototype_head": "yes"}, "centred and prototype_head true or false"),
    ({"centred": True}, "missing tensors \\['feature_centre'\\]"),
])
def test_model_file_rejects_bad_resnet_recipes(tmp_path, change, message):
    network = tiny_resnet(dtype=torch.float32)
    recipe = recipe_for(network)
    recipe.network = {**recipe.network, **change}
    path = tmp_path / "bad.safetensors"
    save_model(path, network, recipe)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


@pytest.mark.parametrize("adapt_from", [3, 4])
def test_prototype_head_classifies_by_nearest_class_mean_before_any_step(adapt_from):
    network = tiny_resnet(norm="fixed", adapt_from=adapt_from, centred=True, prototype_head=True)
    meta = params_of(network)
    xs, xq = images(WAYS * SHOTS, 2), images(5, 3)
    ys = torch.arange(WAYS).repeat_interleave(SHOTS)
    params = adapt(network, network.task_parameters(meta, WAYS), xs, ys, (0.3,), 0, first_order=True).params
    features = lambda x: network.head_input(meta, network.frozen_part(meta, x))  # noqa: E731
    means = torch.stack([features(xs)[ys == c].mean(0) for c in range(WAYS)])
    # the shared row's w·x + b is the same for every class, so only the distance to each mean is left
    expected = (-meta["logit_scale"] * torch.cdist(features(xq), means) ** 2).softmax(-1)
    torch.testing.assert_close(predict(network, params, xs, xq).softmax(-1), expected, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(expected, (features(xq) @ means.T * meta["logit_scale"]).softmax(-1), atol=1e-3)
