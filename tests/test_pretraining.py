"""Supervised pretraining and meta-learning from it, on generated photos in Tiny ImageNet's layout."""

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import draw_glyph

import fewshot_serve.training.pretraining as pretraining
from fewshot_serve import cli
from fewshot_serve.data.sources import DataSpec
from fewshot_serve.files.model_file import load_model, save_model
from fewshot_serve.networks import ResNet12
from fewshot_serve.training.checkpoint import load_checkpoint, save_checkpoint
from fewshot_serve.training.pretraining import PretrainConfig, pretrain

WIDTHS = (4, 4, 8, 8)


def config_for(tree, out, **changes):
    settings = dict(out=out, data=DataSpec("tiny-imagenet", tree, image_size=16), widths=WIDTHS, epochs=2,
                    batch_size=64, val_episodes=10, checkpoint_every=3, bf16=False)
    return PretrainConfig(**{**settings, **changes})


def crashing_at_step_5(schedule):
    """``schedule`` (the learning rate's), raising at step 5 as a crash would; the checkpoint before is step 3's."""
    def crashing(base, step, total):
        if step == 5:
            raise KeyboardInterrupt("simulated crash")
        return schedule(base, step, total)
    return crashing


def run_straight_and_crashed_then_resumed(straight, crashed, monkeypatch) -> dict[str, torch.Tensor]:
    """Pretrain ``straight`` through; crash ``crashed`` (the same settings) at step 5 and resume it. Asserts
    that both end with the same checkpoint tensors, and returns them."""
    pretrain(straight, progress=False)
    real = pretraining.cosine_lr
    monkeypatch.setattr(pretraining, "cosine_lr", crashing_at_step_5(real))
    with pytest.raises(KeyboardInterrupt):
        pretrain(crashed, progress=False)
    monkeypatch.setattr(pretraining, "cosine_lr", real)
    crashed.resume = True
    pretrain(crashed, progress=False)
    resumed = load_checkpoint(crashed.run_dir / "checkpoint.safetensors").weights
    tensors = load_checkpoint(straight.run_dir / "checkpoint.safetensors").weights
    assert set(resumed) == set(tensors)
    for key, value in tensors.items():
        assert torch.equal(resumed[key], value), key
    return tensors


@pytest.fixture(scope="module")
def pretrained(tiny_imagenet_tree, tmp_path_factory):
    config = config_for(tiny_imagenet_tree, tmp_path_factory.mktemp("pretrain") / "pre.safetensors")
    return config, pretrain(config, progress=False)


def test_pretraining_exports_a_servable_fixed_norm_backbone(pretrained):
    config, result = pretrained
    network, recipe = load_model(result.model_path)
    assert recipe.algorithm == "pretrain" and recipe.network["norm"] == "fixed" and recipe.network["adapt_from"] == 4
    assert recipe.class_counts == {"train": 25, "val": 5, "test": 10}
    assert torch.count_nonzero(network.head.weight) == 0
    assert 0.2 < recipe.val_metric["nearest_mean_5shot"] <= 1.0 and result.best_epoch in (1, 2)
    log = [json.loads(line) for line in (config.run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "val_metric" in r] == [1, 2]
    assert (config.run_dir / "curves.png").stat().st_size > 0
    classes = json.loads((config.run_dir / "classes.json").read_text())
    assert len(classes["test"]) == 10 and all(name.startswith("thing ") for name in classes["test"])


def test_resumed_pretraining_ends_with_the_uninterrupted_weights(pretrained, tiny_imagenet_tree, tmp_path, monkeypatch):
    straight_config, _ = pretrained
    config = config_for(tiny_imagenet_tree, tmp_path / "pre.safetensors")
    real = pretraining.cosine_lr
    monkeypatch.setattr(pretraining, "cosine_lr", crashing_at_step_5(real))
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, progress=False)
    assert load_checkpoint(config.run_dir / "checkpoint.safetensors").iteration == 3
    monkeypatch.setattr(pretraining, "cosine_lr", real)
    config.resume = True
    pretrain(config, progress=False)
    resumed = load_checkpoint(config.run_dir / "checkpoint.safetensors")
    straight = load_checkpoint(straight_config.run_dir / "checkpoint.safetensors")
    assert resumed.iteration == straight.iteration
    for key, value in straight.weights.items():
        assert torch.equal(resumed.weights[key], value), key
    with pytest.raises(ValueError, match="different settings"):
        pretrain(config_for(tiny_imagenet_tree, tmp_path / "pre.safetensors", lr=0.05, resume=True), progress=False)
    # a checkpoint written before a setting existed resumes while this run leaves it at its default
    before = load_checkpoint(config.run_dir / "checkpoint.safetensors")
    del before.config["distortion"], before.config["cosine_scale"]
    save_checkpoint(config.run_dir / "checkpoint.safetensors", before)
    pretrain(config_for(tiny_imagenet_tree, tmp_path / "pre.safetensors", resume=True), progress=False)
    with pytest.raises(ValueError, match=r"different settings \(cosine_scale\)"):
        pretrain(config_for(tiny_imagenet_tree, tmp_path / "pre.safetensors", cosine_scale=10.0, resume=True),
                 progress=False)


def test_cutmix_and_moving_average_resume_exactly_and_export_the_average(tiny_imagenet_tree, tmp_path, monkeypatch):
    def config(name, **changes):
        settings = {"epochs": 1, "cutmix": 1.0, "ema": 0.9, **changes}
        return config_for(tiny_imagenet_tree, tmp_path / f"{name}.safetensors", **settings)

    straight = config("straight")
    tensors = run_straight_and_crashed_then_resumed(straight, config("crashed"), monkeypatch)

    # every live tensor has its average beside it, and the file holds the average (one epoch: the last state)
    live = [k for k in tensors if not k.startswith(pretraining.AVERAGE)]
    assert {pretraining.AVERAGE + k for k in live} == set(tensors) - set(live)
    network, _ = load_model(straight.out)
    conv = "blocks.0.conv1.weight"
    assert torch.equal(network.state_dict()[conv], tensors[pretraining.AVERAGE + conv])
    assert not torch.equal(tensors[pretraining.AVERAGE + conv], tensors[conv])
    record = [json.loads(line) for line in (straight.run_dir / "log.jsonl").read_text().splitlines()][-1]
    assert {"val_metric", "val_raw_metric", "val_raw_1shot"} <= set(record)

    with pytest.raises(ValueError, match="cutmix"):
        config("bad", cutmix=1.5)
    with pytest.raises(ValueError, match="ema"):
        config("bad", ema=1.0)


def test_the_cosine_classifier_scores_directions_only_up_to_its_scale():
    classifier = pretraining.CosineClassifier(6, 4, scale=16.0)
    features = torch.randn(5, 6)
    logits = classifier(features)
    expected = 16.0 * F.cosine_similarity(features[:, None], classifier.weight[None], dim=-1)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(classifier(3.0 * features), logits, atol=1e-5)  # feature length does not count
    # the most a logit gets
    assert torch.allclose(classifier(classifier.weight.detach()).diagonal(), torch.full((4,), 16.0))
    assert [name for name, _ in classifier.named_parameters()] == ["weight"]


def test_pretraining_with_a_cosine_classifier_resumes_exactly_and_keeps_its_scale(tiny_imagenet_tree, tmp_path,
                                                                                 monkeypatch):
    def config(name, **changes):
        return config_for(tiny_imagenet_tree, tmp_path / f"{name}.safetensors", **{"epochs": 1, "cosine_scale": 10.0,
                                                                                  **changes})

    tensors = run_straight_and_crashed_then_resumed(config("straight"), config("crashed"), monkeypatch)
    assert pretraining.CLASSIFIER + "weight" in tensors and pretraining.CLASSIFIER + "bias" not in tensors
    with pytest.raises(ValueError, match="different settings"):
        pretrain(config("crashed", cosine_scale=20.0, resume=True), progress=False)
    with pytest.raises(ValueError, match="cosine-scale"):
        config("bad", cosine_scale=-1.0)


@pytest.mark.slow  # over 4 s on 2 cores: the full run's, not the quick tier's
def test_pretraining_can_start_from_another_runs_checkpoint_at_a_larger_size(pretrained, tiny_imagenet_tree, tmp_path,
                                                                              monkeypatch, capsys):
    straight_config, _ = pretrained
    source = load_checkpoint(straight_config.run_dir / "checkpoint.safetensors").weights
    monkeypatch.setattr(pretraining, "cosine_lr", lambda base, step, total: 0.0)  # no step moves a weight

    def weights_after_one_epoch(name, **changes):
        config = config_for(tiny_imagenet_tree, tmp_path / f"{name}.safetensors", epochs=1,
                            data=DataSpec("tiny-imagenet", tiny_imagenet_tree, image_size=24), **changes)
        pretrain(config, progress=False)
        return load_checkpoint(config.run_dir / "checkpoint.safetensors").weights

    started = weights_after_one_epoch("init", init=straight_config.run_dir / "checkpoint.safetensors")
    fresh = weights_after_one_epoch("fresh")
    trained = [k for k in source if not k.startswith(pretraining.RUNNING)]
    assert any(k.startswith(pretraining.CLASSIFIER) for k in trained)
    for key in trained:
        assert torch.equal(started[key], source[key]), key
    assert not all(torch.equal(fresh[k], source[k]) for k in trained)

    # refused: another network's checkpoint, a model file (no classifier, no statistics), no file
    wider = config_for(tiny_imagenet_tree, tmp_path / "wider.safetensors", widths=(4, 4, 8, 16), epochs=1)
    pretrain(wider, progress=False)
    common = ["pretrain", "--dataset", "tiny-imagenet", "--data-root", str(tiny_imagenet_tree), "--widths", "4,4,8,8",
              "--out", str(tmp_path / "x.safetensors"), "--init"]
    for init, reason in ((wider.run_dir / "checkpoint.safetensors", "has shape"),
                         (straight_config.out, "not a training checkpoint"), (tmp_path / "none", "no such file")):
        assert cli.main([*common, str(init)]) == 2
        assert reason in capsys.readouterr().err


@pytest.mark.slow  # over 4 s on 2 cores: the full run's, not the quick tier's
def test_the_final_run_adds_the_validation_classes_and_can_stop_early_on_the_long_schedule(
        pretrained, tiny_imagenet_tree, tmp_path, monkeypatch):
    """``include_val_classes`` (the final run of a fixed recipe): the validation classes join the training
    ones after them, so a checkpoint of the training classes alone starts every row it knows; nothing is
    validated and the latest weights are exported. ``stop_after`` ends the run early on the longer schedule."""
    straight_config, _ = pretrained
    source = load_checkpoint(straight_config.run_dir / "checkpoint.safetensors").weights
    seen, schedule = [], []
    real_images, real_lr = pretraining.training_images, pretraining.cosine_lr
    monkeypatch.setattr(pretraining, "training_images", lambda classes, rotate: seen.append(classes.names)
                        or real_images(classes, rotate))
    monkeypatch.setattr(pretraining, "cosine_lr", lambda base, step, total: schedule.append((step, total))
                        or real_lr(base, step, total))
    config = config_for(tiny_imagenet_tree, tmp_path / "final.safetensors", epochs=3, stop_after=1,
                        include_val_classes=True, init=straight_config.run_dir / "checkpoint.safetensors")
    result = pretrain(config, progress=False)

    names = json.loads((straight_config.run_dir / "classes.json").read_text())
    assert seen == [names["train"] + names["val"]]
    steps = len(schedule)  # one epoch of 30 classes' images, on the 3-epoch schedule
    assert steps >= 1 and schedule == [(step, 3 * steps) for step in range(steps)]
    tensors = load_checkpoint(config.run_dir / "checkpoint.safetensors").weights
    weight = pretraining.CLASSIFIER + "weight"
    assert tensors[weight].shape[0] == 30 and source[weight].shape[0] == 25
    network, recipe = load_model(config.out)
    assert recipe.class_counts == {"train+val": 30, "test": 10} and recipe.val_metric == {}
    assert result.best_score is None and result.best_epoch == 1
    conv = "blocks.0.conv1.weight"
    assert torch.equal(network.state_dict()[conv], tensors[conv]) and not torch.equal(tensors[conv], source[conv])
    log = [json.loads(line) for line in (config.run_dir / "log.jsonl").read_text().splitlines()]
    assert len(log) == steps and not any("val_metric" in r for r in log)

    # with no step taken: the 25-class checkpoint starts the rows it knows, one of all 30 classes every row
    monkeypatch.setattr(pretraining, "cosine_lr", lambda base, step, total: 0.0)
    for name, init, rows in (("from25", straight_config, 25), ("from30", config, 30)):
        started = config_for(tiny_imagenet_tree, tmp_path / f"{name}.safetensors", epochs=1, include_val_classes=True,
                             init=init.run_dir / "checkpoint.safetensors")
        pretrain(started, progress=False)
        known = load_checkpoint(init.run_dir / "checkpoint.safetensors").weights[weight]
        saved = load_checkpoint(started.run_dir / "checkpoint.safetensors").weights
        assert torch.equal(saved[weight][:rows], known)
    with pytest.raises(ValueError, match="stop-after"):
        config_for(tiny_imagenet_tree, tmp_path / "x.safetensors", epochs=2, stop_after=3)

    # meta-learning from it warns that validation has seen its classes, and its file still says so
    meta = ["train", "--dataset", "tiny-imagenet", "--data-root", str(tiny_imagenet_tree), "--init", str(config.out),
            "--adapt-from", "4", "--freeze-body", "--ways", "5", "--shots", "1", "--queries", "3", "--meta-batch", "2",
            "--iterations", "2", "--val-episodes", "3", "--out", str(tmp_path / "meta.safetensors")]
    with pytest.warns(UserWarning, match="trained on the validation classes too"):
        assert cli.main(meta) == 0
    recipe = load_model(tmp_path / "meta.safetensors")[1]
    assert recipe.class_counts == {"train+val": 30, "test": 10} and recipe.val_metric == {}


def test_meta_learning_from_the_pretrained_file_keeps_its_frozen_body(pretrained, tiny_imagenet_tree, tmp_path, capsys):
    _, result = pretrained
    out = tmp_path / "photos.safetensors"
    common = ["--dataset", "tiny-imagenet", "--data-root", str(tiny_imagenet_tree)]
    assert cli.main(["train", *common, "--init", str(result.model_path), "--adapt-from", "4", "--freeze-body",
                     "--algorithm", "maml", "--learned-lrs", "--ways", "5", "--shots", "1", "--queries", "3",
                     "--inner-steps", "3", "--inner-lr", "0.5", "--meta-batch", "4", "--iterations", "6",
                     "--val-every", "3", "--val-episodes", "5", "--out", str(out)]) == 0
    start, _ = load_model(result.model_path)
    trained, recipe = load_model(out)
    assert recipe.algorithm == "maml" and recipe.network["lr_steps"] == 3 and recipe.preprocessing["image_size"] == 16
    for key, value in start.state_dict().items():
        if key.startswith("blocks."):
            assert torch.equal(trained.state_dict()[key], value), key
    assert not torch.equal(trained.logit_scale, start.logit_scale)
    assert cli.main(["evaluate", str(out), *common, "--episodes", "5", "--queries", "3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["episodes"] == 5
    # the test classes of another split may be the training classes of this one
    assert cli.main(["train", *common, "--split-seed", "1", "--init", str(result.model_path), "--iterations", "1",
                     "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "split seed" in capsys.readouterr().err


@pytest.mark.parametrize("frozen", [["--freeze-body"], []], ids=["from the frozen-body cache", "from the images"])
def test_centred_meta_learning_measures_the_training_classes_mean_feature(pretrained, tiny_imagenet_tree, tmp_path,
                                                                          capsys, frozen):
    from fewshot_serve.data.sources import load_splits

    _, result = pretrained
    out = tmp_path / "centred.safetensors"
    common = ["--dataset", "tiny-imagenet", "--data-root", str(tiny_imagenet_tree), "--init", str(result.model_path)]
    assert cli.main(["train", *common, "--adapt-from", "3", *frozen, "--centre-features", "--algorithm",
                     "fomaml", "--ways", "3", "--shots", "1", "--queries", "2", "--inner-steps", "2",
                     "--meta-batch", "2", "--iterations", "2", "--val-every", "2", "--val-episodes", "3",
                     "--out", str(out)]) == 0
    start, _ = load_model(result.model_path)
    trained, recipe = load_model(out)
    assert recipe.network["centred"] is True and "feature_centre" not in dict(start.named_buffers())
    train_classes = load_splits(DataSpec("tiny-imagenet", tiny_imagenet_tree), recipe.image_preprocessing())["train"]
    with torch.no_grad():  # every training image, one at a time, with the pretrained backbone
        x = recipe.image_preprocessing().normalize(train_classes.images)
        mean = torch.stack([start.embed(dict(start.named_parameters()), image[None])[0] for image in x]).mean(0)
    torch.testing.assert_close(trained.feature_centre, mean, rtol=1e-4, atol=1e-6)
    assert mean.abs().max() > 1e-2  # a centre that changes the features

    # refused without a pretrained (fixed-norm) ResNet-12 to measure: none at all, or one with support norms
    support_norm = ResNet12(3, WIDTHS, 16, norm="support")
    save_model(tmp_path / "support.safetensors", support_norm, replace(recipe, network=support_norm.config()))
    for init in ([], ["--init", str(tmp_path / "support.safetensors")]):
        assert cli.main(["train", "--dataset", "tiny-imagenet", "--data-root", str(tiny_imagenet_tree), *init,
                         "--centre-features", "--iterations", "1", "--out", str(tmp_path / "x.safetensors")]) == 2
        assert "--centre-features needs" in capsys.readouterr().err


def test_handwriting_pretraining_learns_each_rotation_as_a_class(tmp_path):
    """Omniglot's layout, generated: 8 alphabets of 3 characters (splits by alphabet 5 / 1 / 2)."""
    from fewshot_serve.data.sources import load_splits, standard_preprocessing

    for alphabet in range(8):
        for character in range(3):
            folder = tmp_path / "omniglot" / f"Alphabet{alphabet}" / f"character{character + 1:02d}"
            folder.mkdir(parents=True)
            for drawing in range(20):
                draw_glyph(10 * alphabet + character, 1000 * alphabet + 50 * character + drawing).save(
                    folder / f"{drawing}.png")
    spec = DataSpec("omniglot", tmp_path / "omniglot")
    train = load_splits(spec, standard_preprocessing(spec))["train"]
    images, labels, classes = pretraining.training_images(train, rotate=True)
    assert classes == 4 * len(train) == 60 and len(images) == len(labels) == 4 * len(train.images)
    # label 4c + k is character c turned k quarter turns: what meta-training's episodes call that class
    first = train.images[0]
    for turns in range(4):
        (index,) = torch.nonzero(labels == turns).flatten()[:1]
        assert torch.equal(images[index], torch.rot90(first, turns, dims=(-2, -1)))

    config = PretrainConfig(out=tmp_path / "characters.safetensors", data=spec, widths=WIDTHS, epochs=1,
                            batch_size=32, val_ways=3, val_episodes=5, bf16=False)
    pretrain(config, progress=False)
    network, recipe = load_model(config.out)
    assert recipe.dataset == "omniglot" and recipe.ways == 3 and recipe.network["in_channels"] == 1
    assert recipe.class_counts == {"train": 15, "val": 3, "test": 6}
    classifier = load_checkpoint(config.run_dir / "checkpoint.safetensors").weights["classifier.weight"]
    assert classifier.shape == (60, network.feature_dim)
    with pytest.raises(ValueError, match="val-ways"):
        replace(config, val_ways=1)


def test_handwriting_is_only_shifted_never_mirrored():
    from fewshot_serve.data.augmentation import augment_characters

    image = torch.zeros(1, 1, 12, 12, dtype=torch.uint8)
    image[0, 0, 3:9, 5] = 255  # a vertical stroke, with a hook that a mirror image would move
    image[0, 0, 3, 6:8] = 200
    batch = image.expand(64, -1, -1, -1)
    out = augment_characters(batch, torch.Generator().manual_seed(0), padding=2)
    padded = F.pad(image.float(), (2,) * 4, mode="reflect")
    shifts = {(dy, dx): padded[0, :, dy:dy + 12, dx:dx + 12].to(torch.uint8) for dy in range(5) for dx in range(5)}
    found = [next(k for k, shifted in shifts.items() if torch.equal(shifted, o)) for o in out]
    assert len(set(found)) > 10 and out.dtype == torch.uint8
    assert torch.equal(out, augment_characters(batch, torch.Generator().manual_seed(0), padding=2))


def test_handwriting_distortions_are_reproducible_affine_and_scaled_by_their_strength(tmp_path):
    from fewshot_serve.data.augmentation import augment_characters, distort

    paper = torch.full((16, 1, 28, 28), 255, dtype=torch.uint8)
    image = paper.clone()
    image[:, :, 6:22, 12:15] = 0  # a thick vertical stroke, ink on paper
    image[:, :, 6:9, 12:20] = 0
    def draw(strength, seed=0):
        return distort(image, torch.Generator().manual_seed(seed), strength)

    assert torch.equal(draw(1.0), draw(1.0)) and not torch.equal(draw(1.0), draw(1.0, seed=1))
    blank = distort(paper, torch.Generator().manual_seed(0), 1.0)  # the border repeats: no ink comes in
    torch.testing.assert_close(blank, paper.float(), rtol=0, atol=1e-3)
    def moved(out):
        return (out - image.float()).abs().mean().item()

    assert moved(draw(0.01)) < 1.0 < 5.0 < moved(draw(1.0))
    # ink is moved, not made: its area scales by the determinant, within 0.8 * 0.8 * 0.91 .. 1.2 * 1.2 * 1.09
    def ink(out):
        return (255.0 - out).sum((1, 2, 3))

    ratio = ink(draw(1.0)) / ink(image.float())
    assert ratio.min() > 0.5 and ratio.max() < 1.5 and ratio.std() > 0.02
    out = augment_characters(image, torch.Generator().manual_seed(0), padding=2, distortion=0.5)
    assert out.dtype == torch.uint8 and out.shape == image.shape

    spec = DataSpec("omniglot", tmp_path)
    with pytest.raises(ValueError, match="distortion is a strength"):
        PretrainConfig(out=tmp_path / "x.safetensors", data=spec, distortion=1.5)
    with pytest.raises(ValueError, match="distortion is for handwriting"):
        PretrainConfig(out=tmp_path / "x.safetensors", data=DataSpec("tiny-imagenet", tmp_path), distortion=0.5)


def test_proto_maml_from_the_pretrained_file_is_recorded_and_refused_without_a_resnet(pretrained, tiny_imagenet_tree,
                                                                                      tmp_path, capsys):
    _, result = pretrained
    out = tmp_path / "proto.safetensors"
    common = ["--dataset", "tiny-imagenet", "--data-root", str(tiny_imagenet_tree)]
    assert cli.main(["train", *common, "--init", str(result.model_path), "--adapt-from", "4", "--freeze-body",
                     "--prototype-head", "--learned-lrs", "--ways", "3", "--shots", "2", "--queries", "2",
                     "--inner-steps", "1", "--inner-lr", "1", "--meta-batch", "2", "--iterations", "2",
                     "--val-every", "2", "--val-episodes", "3", "--out", str(out)]) == 0
    trained, recipe = load_model(out)
    assert recipe.network["prototype_head"] is True and trained.prototype_head
    assert cli.main(["train", *common, "--prototype-head", "--iterations", "1",
                     "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "--prototype-head needs --init" in capsys.readouterr().err
    assert cli.main(["train", *common, "--init", str(result.model_path), "--prototype-head", "--algorithm", "reptile",
                     "--iterations", "1", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "not reptile" in capsys.readouterr().err
