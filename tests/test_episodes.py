"""Episode sampling and class splits."""

from pathlib import Path

import pytest
import torch

from fewshot_serve.data.datasets import load_folder_tree, split_by_group
from fewshot_serve.data.episodes import ImageEpisodes, SinusoidTasks
from fewshot_serve.preprocessing import Preprocessing

GRAY16 = Preprocessing(16, 1, True, "pad", (0.0,), (1.0,))


@pytest.fixture(scope="module")
def glyphs(glyph_tree):
    return load_folder_tree(glyph_tree, GRAY16)


def test_dataset_is_one_uint8_tensor(glyphs):
    assert glyphs.images.dtype == torch.uint8
    assert glyphs.images.shape == (24 * 8, 1, 16, 16)
    assert glyphs.counts().tolist() == [8] * 24


def test_episode_shapes_and_labels(glyphs):
    sampler = ImageEpisodes(glyphs, GRAY16, ways=5, shots=2, queries=3)
    batch = sampler.sample(torch.Generator().manual_seed(0), tasks=4, device="cpu")
    assert batch.x_support.shape == (4, 10, 1, 16, 16) and batch.x_query.shape == (4, 15, 1, 16, 16)
    assert batch.x_support.dtype == torch.float32
    for ys, yq in zip(batch.y_support, batch.y_query):
        assert sorted(ys.tolist()) == sorted(list(range(5)) * 2)
        assert sorted(yq.tolist()) == sorted(list(range(5)) * 3)


def test_labels_are_assigned_to_classes_at_random_per_episode(glyphs):
    sampler = ImageEpisodes(glyphs, GRAY16, ways=3, shots=1, queries=1)
    generator = torch.Generator().manual_seed(0)
    # which image gets label 0 changes between episodes; with a fixed assignment it never would
    label_zero = {tuple(sampler.sample_uint8(generator)[0][0].flatten().tolist()) for _ in range(20)}
    assert len(label_zero) > 5


def test_support_and_query_images_of_an_episode_are_distinct_draws(glyphs):
    sampler = ImageEpisodes(glyphs, GRAY16, ways=4, shots=4, queries=4)
    xs, ys, xq, yq = sampler.sample_uint8(torch.Generator().manual_seed(1))
    for label in range(4):
        images = torch.cat([xs[ys == label], xq[yq == label]])
        assert len({tuple(im.flatten().tolist()) for im in images}) == 8  # 8 different files


def test_same_seed_same_episodes(glyphs):
    sampler = ImageEpisodes(glyphs, GRAY16, ways=5, shots=1, queries=2)
    a = sampler.sample(torch.Generator().manual_seed(3), 2, "cpu")
    b = sampler.sample(torch.Generator().manual_seed(3), 2, "cpu")
    assert all(torch.equal(x, y) for x, y in zip(a[:4], b[:4]))


def test_rotation_augmentation_quadruples_classes(glyphs):
    sampler = ImageEpisodes(glyphs.subset([0]), GRAY16, ways=4, shots=1, queries=1, rotate=True)
    xs, _, _, _ = sampler.sample_uint8(torch.Generator().manual_seed(0))
    assert len({tuple(im.flatten().tolist()) for im in xs}) == 4  # one class, four rotations


def test_splits_are_disjoint_cover_everything_and_depend_only_on_seed(glyphs):
    splits = split_by_group(glyphs, seed=5)
    names = [set(splits[s].names) for s in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert set.union(*names) == set(glyphs.names)
    assert len(names[2]) == 6 and len(names[1]) == 3
    again = split_by_group(glyphs, seed=5)
    assert all(again[s].names == splits[s].names for s in splits)
    assert split_by_group(glyphs, seed=6)["test"].names != splits["test"].names


def test_splits_keep_groups_together(glyphs):
    glyphs.groups = [f"alphabet{i // 4}" for i in range(24)]  # 6 alphabets of 4 characters
    try:
        splits = split_by_group(glyphs, seed=0)
        groups = [set(splits[s].groups) for s in ("train", "val", "test")]
        assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    finally:
        glyphs.groups = list(glyphs.names)


def test_sampler_rejects_impossible_episodes(glyphs):
    with pytest.raises(ValueError, match="examples per class"):
        ImageEpisodes(glyphs, GRAY16, ways=5, shots=5, queries=5)
    with pytest.raises(ValueError, match="classes"):
        ImageEpisodes(glyphs.subset([0, 1]), GRAY16, ways=5, shots=1, queries=1)


def test_sinusoid_tasks_follow_the_maml_ranges():
    batch = SinusoidTasks(shots=5, queries=20).sample(torch.Generator().manual_seed(0), 500, "cpu")
    x = torch.cat([batch.x_support, batch.x_query], 1)
    y = torch.cat([batch.y_support, batch.y_query], 1)
    assert x.shape == (500, 25, 1) and x.min() >= -5 and x.max() <= 5
    assert y.abs().max() <= 5.0 and y.abs().amax(1).max() > 4.0


def test_omniglot_reads_the_background_set_of_the_torchvision_layout(tmp_path):
    from conftest import write_class_tree

    from fewshot_serve.data.datasets import load_omniglot

    for part, alphabets in (("images_background", ("Alpha", "Beta")), ("images_evaluation", ("Gamma",))):
        for alphabet in alphabets:
            write_class_tree(tmp_path / "omniglot-py" / part / alphabet, classes=2, per_class=3)
    classes = load_omniglot(tmp_path, Preprocessing(28, 1, True, "pad", (0.0,), (1.0,)))
    assert classes.groups == ["Alpha", "Alpha", "Beta", "Beta"]  # the evaluation alphabets stay unseen
    assert classes.names[0] == "Alpha/class00" and classes.images.shape == (12, 1, 28, 28)


def test_download_fetches_only_the_background_set(tmp_path, monkeypatch):
    import torchvision.datasets

    from fewshot_serve.data.datasets import download_omniglot
    from fewshot_serve.data.sources import DataSpec, load_splits

    requested = []
    monkeypatch.setattr(torchvision.datasets, "Omniglot",
                        lambda root, background, download: requested.append((background, download)))
    assert download_omniglot(tmp_path) == tmp_path / "omniglot-py" / "images_background"
    assert requested == [(True, True)]
    with pytest.raises(ValueError, match="--dataset omniglot --download"):
        load_splits(DataSpec("omniglot-subset", tmp_path, download=True),
                    Preprocessing(28, 1, True, "pad", (0.0,), (1.0,)))


def test_omniglot_dataset_names_pick_the_background_set_or_its_subset(tmp_path, monkeypatch):
    """'omniglot' is the whole background set, 'omniglot-subset' the 8 alphabets: the name in a
    model's recipe must rebuild the test alphabets of the set the model was trained beside."""
    from conftest import write_class_tree

    from fewshot_serve.data.datasets import DATA_ENV
    from fewshot_serve.data.sources import DataSpec, load_splits

    for folder, count in (("images_background", 12), ("images_background_subset", 8)):
        for alphabet in range(count):
            write_class_tree(tmp_path / "omniglot" / folder / f"A{alphabet:02d}", classes=1, per_class=2)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    preprocessing = Preprocessing(28, 1, True, "pad", (0.0,), (1.0,))
    for dataset, count, test_alphabets in (("omniglot", 12, 3), ("omniglot-subset", 8, 2)):
        splits = load_splits(DataSpec(dataset), preprocessing)
        assert sum(len(split) for split in splits.values()) == count
        assert len(set(splits["test"].groups)) == test_alphabets
        assert not set(splits["test"].groups) & set(splits["train"].groups)


def test_cifar_fs_uses_the_standard_64_16_20_class_split(monkeypatch):
    import numpy as np
    import torchvision.datasets

    from fewshot_serve.data.datasets import CIFAR_FS_TEST, CIFAR_FS_VAL, load_cifar100, split_cifar_fs

    names = sorted(CIFAR_FS_VAL + CIFAR_FS_TEST + [f"train_class_{i:02d}" for i in range(64)])

    class FakeCIFAR100:  # CIFAR-100's shape: uint8 HxWx3 images, fine labels, class names
        def __init__(self, root, train, download):
            count = 3 if train else 1
            self.classes = names
            self.targets = [c for c in range(100) for _ in range(count)]
            self.data = np.full((100 * count, 32, 32, 3), 7, dtype=np.uint8)

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    classes = load_cifar100("unused", Preprocessing(32, 3, False, "squash", (0.0,) * 3, (1.0,) * 3), download=False)
    assert classes.counts().tolist() == [4] * 100 and classes.images.shape == (400, 3, 32, 32)
    splits = split_cifar_fs(classes)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert set(splits["test"].names) == set(CIFAR_FS_TEST)


def test_the_default_data_root_is_the_shared_folder_beside_the_checkout(monkeypatch):
    from fewshot_serve.data.datasets import DATA_ENV, default_data_root

    monkeypatch.delenv(DATA_ENV, raising=False)
    assert default_data_root() == Path(__file__).resolve().parents[2] / "shared" / "datasets"
    monkeypatch.setenv(DATA_ENV, "/somewhere/else")
    assert default_data_root() == Path("/somewhere/else")
