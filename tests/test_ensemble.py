"""A feature ensemble: its features are its members' own, side by side; it meta-learns (finite differences),
folds, serves and exports like a single ResNet-12; files are built from pretrained members only and checked."""

import math

import numpy as np
import pytest
import torch
from conftest import assert_onnx_export_agrees
from test_pretraining import config_for
from test_resnet12 import (
    SHOTS,
    WAYS,
    assert_cached_frozen_part_gives_the_same_meta_gradient,
    assert_frozen_classifier_equals_predict,
    assert_meta_gradient_matches_central_differences,
    images,
    params_of,
    recipe_for,
    second_order_batch,
    tiny_resnet,
)

from fewshot_serve import cli
from fewshot_serve.data.sources import DataSpec
from fewshot_serve.files.model_file import ModelFileError, load_model, save_model
from fewshot_serve.networks import FeatureEnsemble, build_network
from fewshot_serve.networks.ensemble import member_config
from fewshot_serve.training.pretraining import pretrain


def tiny_ensemble(lr_steps=0, prototype_head=False, dtype=torch.float64) -> tuple[FeatureEnsemble, list]:
    """An ensemble of two differently initialized fixed-norm ResNet-12s (the second centred), with a
    non-trivial head; also returns the members as built on their own."""
    members = [tiny_resnet(norm="fixed", adapt_from=4, dtype=dtype, centred=centred) for centred in (False, True)]
    with torch.no_grad():
        for param in members[1].parameters():  # tiny_resnet seeds its weights: make the two members differ
            param.mul_(1.5).add_(0.05)
    ensemble = FeatureEnsemble([member_config(m) for m in members], lr_steps, prototype_head).to(dtype)
    for own, member in zip(ensemble.members, members):
        own.load_state_dict({k: v for k, v in member.state_dict().items() if k in own.state_dict()})
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        ensemble.head.weight.normal_(0, 0.5, generator=g)
        ensemble.head.bias.fill_(0.1)
        ensemble.logit_scale.fill_(2.0)
        if lr_steps:
            ensemble.step_lrs.copy_(0.1 + 0.3 * torch.rand(ensemble.step_lrs.shape, generator=g, dtype=dtype))
    return ensemble, members


def test_the_features_are_each_members_unit_features_side_by_side_at_unit_length():
    ensemble, members = tiny_ensemble()
    x = images(5)
    own = [m.head_input(params_of(m), m.frozen_part(params_of(m), x)) for m in members]
    features = ensemble.frozen_part(params_of(ensemble), x)
    torch.testing.assert_close(features, torch.cat(own, 1) / math.sqrt(2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(5, dtype=features.dtype), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(own[0], own[1][:, : own[0].shape[1]])  # the members differ
    assert set(ensemble.fast_weight_names()) == {"head.weight", "head.bias"}
    assert not any(name.startswith("members.") and ("head" in name or "logit" in name)
                   for name in ensemble.state_dict())


@pytest.mark.parametrize("prototype_head", [False, True])
def test_maml_meta_gradient_matches_central_finite_differences_and_the_cached_features(prototype_head):
    ensemble, _ = tiny_ensemble(lr_steps=2, prototype_head=prototype_head)
    batch, theta = second_order_batch(), params_of(ensemble)
    grads, loss = assert_meta_gradient_matches_central_differences(ensemble, theta, batch)
    for key in ("logit_scale", "step_lrs", "members.1.blocks.0.conv1.weight"):
        assert grads[key].abs().max() > 1e-6, key
    names = assert_cached_frozen_part_gives_the_same_meta_gradient(ensemble, theta, batch, grads, loss)
    assert names == {"head.weight", "head.bias", "logit_scale", "step_lrs"}


def test_frozen_classifier_equals_predict():
    ensemble, _ = tiny_ensemble(prototype_head=True)
    assert_frozen_classifier_equals_predict(ensemble, images(WAYS * SHOTS, 2), images(5, 3), steps=2)


@pytest.fixture(scope="module")
def two_backbones(tiny_imagenet_tree, tmp_path_factory):
    """Two pretrained files of the same data, different seeds; and a third on another split."""
    folder = tmp_path_factory.mktemp("members")
    paths = []
    for seed, split_seed in ((0, 0), (1, 0), (0, 1)):
        data = DataSpec("tiny-imagenet", tiny_imagenet_tree, image_size=16, split_seed=split_seed)
        config = config_for(tiny_imagenet_tree, folder / f"pre-{seed}-{split_seed}.safetensors", data=data, epochs=1,
                            seed=seed, val_episodes=2)
        paths.append(pretrain(config, progress=False).model_path)
    return paths


@pytest.mark.slow  # over 4 s on 2 cores: the full run's, not the quick tier's
def test_pretrained_files_make_an_ensemble_that_meta_learns_its_head_serves_and_exports(
        two_backbones, tiny_imagenet_tree, tmp_path, capsys):
    import fewshot_serve

    first, second, _ = two_backbones
    start = tmp_path / "ensemble-init.safetensors"
    assert cli.main(["ensemble", str(first), str(second), "--out", str(start)]) == 0
    network, recipe = load_model(start)
    assert isinstance(network, FeatureEnsemble) and recipe.algorithm == "pretrain"
    assert recipe.command.startswith("fewshot-serve ensemble")
    for index, path in enumerate((first, second)):
        member = load_model(path)[0].state_dict()
        for key, value in network.members[index].state_dict().items():
            assert torch.equal(value, member[key]), (index, key)

    out = tmp_path / "ensemble.safetensors"
    common = ["--dataset", "tiny-imagenet", "--data-root", str(tiny_imagenet_tree)]
    assert cli.main(["train", *common, "--init", str(start), "--adapt-from", "4", "--freeze-body",
                     "--prototype-head", "--learned-lrs", "--algorithm", "maml", "--ways", "3", "--shots", "2",
                     "--queries", "2", "--inner-steps", "1", "--inner-lr", "1", "--meta-batch", "2",
                     "--iterations", "2", "--val-every", "2", "--val-episodes", "3", "--out", str(out)]) == 0
    trained, recipe = load_model(out)
    assert recipe.network["architecture"] == "ensemble" and trained.prototype_head and trained.lr_steps == 1
    for key, value in network.state_dict().items():
        if key.startswith("members."):
            assert torch.equal(trained.state_dict()[key], value), key
    assert not torch.equal(trained.logit_scale, network.logit_scale)

    model = fewshot_serve.load(out, "cpu")
    rng = np.random.default_rng(0)
    support = {c: [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(2)] for c in "abc"}
    adapted = model.adapt(support)
    queries = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(4)]
    assert_onnx_export_agrees(adapted, queries, adapted.classify(queries), tmp_path / "task.onnx")

    assert cli.main(["train", *common, "--init", str(start), "--adapt-from", "3", "--iterations", "1",
                     "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "adapts its head only" in capsys.readouterr().err


def test_only_pretrained_backbones_of_the_same_data_make_an_ensemble(two_backbones, tmp_path, capsys):
    first, second, other_split = two_backbones
    out = str(tmp_path / "x.safetensors")
    assert cli.main(["ensemble", str(first), str(other_split), "--out", out]) == 2
    assert "split_seed" in capsys.readouterr().err
    assert cli.main(["ensemble", str(first), "--out", out]) == 2
    assert "at least 2" in capsys.readouterr().err
    meta_learned = tiny_resnet(norm="support", dtype=torch.float32)
    save_model(tmp_path / "support.safetensors", meta_learned, recipe_for(meta_learned))
    assert cli.main(["ensemble", str(tmp_path / "support.safetensors"), str(second), "--out", out]) == 2
    assert "must be pretrained backbones" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("change, message", [
    (lambda n: {**n, "members": n["members"][:1]}, "2 to 8 members of resnet12, efficientnet_lite"),
    (lambda n: {**n, "members": [n["members"][0], {**n["members"][1], "norm": "support"}]}, "member 1: a member is"),
    (lambda n: {**n, "members": [{**n["members"][0], "lr_steps": 1}, n["members"][1]]}, "member 0: a member is"),
    (lambda n: {**n, "members": [{**n["members"][0], "image_size": 32}, n["members"][1]]}, "member 0: preprocessing"),
    (lambda n: {**n, "widths": [4, 4, 4, 4]}, "ensemble needs exactly members"),
])
def test_model_file_rejects_bad_ensemble_recipes(tmp_path, change, message):
    ensemble, _ = tiny_ensemble(dtype=torch.float32)
    recipe = recipe_for(ensemble)
    save_model(tmp_path / "good.safetensors", ensemble, recipe)
    assert load_model(tmp_path / "good.safetensors")[1].network == ensemble.config()
    recipe.network = change(recipe.network)
    save_model(tmp_path / "bad.safetensors", ensemble, recipe)
    with pytest.raises(ModelFileError, match=message):
        load_model(tmp_path / "bad.safetensors")


def test_members_must_take_the_same_input():
    small, large = (tiny_resnet(norm="fixed", adapt_from=4, dtype=torch.float32) for _ in range(2))
    configs = [member_config(small), {**member_config(large), "image_size": 32}]
    with pytest.raises(ValueError, match="same input"):
        build_network({"architecture": "ensemble", "members": configs})
