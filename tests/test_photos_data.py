"""Photo data: the Tiny ImageNet layout and class split, training augmentation, the nearest-mean baseline."""

import pytest
import torch
import torch.nn.functional as F
from conftest import write_tiny_imagenet

from fewshot_serve.data.augmentation import augment_photos, cutmix
from fewshot_serve.data.datasets import load_tiny_imagenet
from fewshot_serve.data.episodes import ImageEpisodes
from fewshot_serve.data.sources import DataSpec, load_splits, standard_preprocessing, task_sampler
from fewshot_serve.training.nearest_mean import nearest_mean_accuracy


def test_tiny_imagenet_names_classes_from_words_txt(tiny_imagenet_tree):
    preprocessing = standard_preprocessing(DataSpec("tiny-imagenet"))
    assert (preprocessing.image_size, preprocessing.channels, preprocessing.fit) == (32, 3, "squash")
    classes = load_tiny_imagenet(tiny_imagenet_tree, preprocessing)
    assert classes.names[:2] == ["thing 0", "thing 1"] and classes.groups[:2] == ["n00000000", "n00000001"]
    assert classes.images.shape == (800, 3, 32, 32) and classes.counts().tolist() == [20] * 40


def test_the_160_class_split_is_100_20_40_disjoint_and_deterministic(tmp_path):
    root = write_tiny_imagenet(tmp_path / "tin", classes=160, per_class=1)
    spec = DataSpec("tiny-imagenet", root, image_size=8)
    preprocessing = standard_preprocessing(spec)
    splits = load_splits(spec, preprocessing)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [100, 20, 40]
    groups = [set(splits[s].groups) for s in ("train", "val", "test")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert load_splits(spec, preprocessing)["test"].groups == splits["test"].groups
    other = load_splits(DataSpec("tiny-imagenet", root, image_size=8, split_seed=1), preprocessing)
    assert other["test"].groups != splits["test"].groups


def test_missing_tiny_imagenet_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="Tiny ImageNet not found"):
        load_tiny_imagenet(tmp_path, standard_preprocessing(DataSpec("tiny-imagenet")))


def test_augmentation_crops_flips_and_jitters_reproducibly():
    image = torch.arange(3 * 8 * 8, dtype=torch.float32).view(1, 3, 8, 8).mul(255 / 191).round().to(torch.uint8)
    batch = image.expand(64, -1, -1, -1)
    out = augment_photos(batch, torch.Generator().manual_seed(0), padding=2, jitter=0.0)
    assert out.shape == batch.shape and out.dtype == torch.uint8
    padded = F.pad(image.float(), (2,) * 4, mode="reflect")
    crops = {(dy, dx, flip): padded[0, :, dy:dy + 8, dx:dx + 8].flip(-1) if flip else padded[0, :, dy:dy + 8, dx:dx + 8]
             for dy in range(5) for dx in range(5) for flip in (False, True)}
    found = [next(k for k, c in crops.items() if torch.equal(c.to(torch.uint8), o)) for o in out]
    assert len(set(found)) > 10 and any(f[2] for f in found) and any(not f[2] for f in found)
    again = augment_photos(batch, torch.Generator().manual_seed(0), padding=2, jitter=0.0)
    assert torch.equal(out, again)
    jittered = augment_photos(batch, torch.Generator().manual_seed(0), padding=2, jitter=0.4)
    assert not torch.equal(jittered, out)


def test_cutmix_pastes_one_box_of_the_partner_and_weights_labels_by_its_area():
    # every image one flat shade, so each pixel tells whose it is
    images = (torch.arange(16, dtype=torch.uint8) * 10).view(16, 1, 1, 1).expand(16, 3, 12, 12).contiguous()
    mixed = cutmix(images, torch.Generator().manual_seed(1), probability=1.0)
    assert 0 < mixed.kept < 1 and sorted(mixed.partner.tolist()) == list(range(16))
    own = mixed.images == images
    pasted = mixed.images == images[mixed.partner]
    assert torch.all(own | pasted)
    moved = mixed.partner != torch.arange(16)
    assert moved.any()
    for i in torch.nonzero(moved).flatten():
        assert own[i].float().mean().item() == pytest.approx(mixed.kept)
    again = cutmix(images, torch.Generator().manual_seed(1), probability=1.0)
    assert torch.equal(again.images, mixed.images) and again.kept == mixed.kept
    untouched = cutmix(images, torch.Generator().manual_seed(1), probability=0.0)
    assert untouched.images is images and untouched.kept == 1.0


def test_training_photo_episodes_are_augmented_and_validation_ones_are_not(tiny_imagenet_tree):
    spec = DataSpec("tiny-imagenet", tiny_imagenet_tree)
    preprocessing = standard_preprocessing(spec)
    split = load_splits(spec, preprocessing)["train"]
    assert task_sampler(spec, split, preprocessing, 5, 1, 2, augment=True).augment is augment_photos
    assert task_sampler(spec, split, preprocessing, 5, 1, 2, augment=False).augment is None


def test_nearest_mean_is_perfect_on_separable_features_and_chance_on_noise(tiny_imagenet_tree):
    spec = DataSpec("tiny-imagenet", tiny_imagenet_tree)
    preprocessing = standard_preprocessing(spec)
    classes = load_tiny_imagenet(tiny_imagenet_tree, preprocessing)
    sampler = ImageEpisodes(classes, preprocessing, 5, 1, 5)
    labels = torch.repeat_interleave(torch.arange(len(classes)), classes.counts())
    separable = F.one_hot(labels, len(classes)).float() + 0.01 * torch.randn(len(labels), len(classes))
    assert nearest_mean_accuracy(separable, sampler, 50, seed=0).mean == 1.0
    noise = torch.randn(len(labels), 64, generator=torch.Generator().manual_seed(0))
    chance = nearest_mean_accuracy(noise, sampler, 300, seed=0)
    assert abs(chance.mean - 0.2) < 3 * chance.ci95 + 0.01
