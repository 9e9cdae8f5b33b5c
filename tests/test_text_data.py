"""Text datasets (CLINC150, ARSC) in the layouts ../shared holds, made small here, and meta-training on them."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from test_text import save_tiny_text_model

import fewshot_serve
from fewshot_serve.data.episodes import ImageEpisodes
from fewshot_serve.data.sources import DataSpec, load_splits
from fewshot_serve.data.text_datasets import ARSC_TEST_DOMAINS, arsc_test_tasks
from fewshot_serve.files.model_file import load_model
from fewshot_serve.training.evaluation import evaluate_fixed_tasks
from fewshot_serve.training.trainer import TrainConfig, train

pytest.importorskip("tokenizers", reason="the tokenizers library is not installed")
WORDS = "refund money order cancel weather rain sunny music play jazz song want my the".split()


@pytest.fixture(scope="module")
def clinc(tmp_path_factory):
    """16 intents of 12 utterances each, in CLINC150's data_full.json layout (with out-of-scope rows)."""
    root = tmp_path_factory.mktemp("clinc150")
    g = torch.Generator().manual_seed(0)
    rows = {split: [] for split in ("train", "val", "test")}
    for intent in range(16):
        for i in range(12):
            words = [WORDS[(intent + int(j)) % len(WORDS)] for j in torch.randint(0, 3, (4,), generator=g)]
            rows[("train", "val", "test")[i % 3]].append([" ".join(words), f"intent_{intent:02d}"])
    (root / "data_full.json").write_text(json.dumps({**rows, "oos_train": [["hello", "oos"]]}))
    return root


@pytest.fixture(scope="module")
def arsc(tmp_path_factory):
    """Six domains (two of them test domains) x three thresholds, in ARSC's jsonl.gz layout."""
    root = tmp_path_factory.mktemp("arsc")
    domains = ["apparel", "baby", "music", "toys_games", *ARSC_TEST_DOMAINS[:2]]
    with gzip.open(root / "arsc.jsonl.gz", "wt") as handle:
        for domain in domains:
            for threshold in ("t2", "t4", "t5"):
                splits = ("dev", "test") if domain == "music" else ("train", "dev", "test")  # music lacks train
                for split in splits:
                    count = 5 if split == "train" and domain in ARSC_TEST_DOMAINS else 8
                    for label in (1, -1):
                        for i in range(count):
                            text = f"{'great' if label == 1 else 'awful'} {domain} {threshold} item {i}"
                            handle.write(json.dumps({"domain": domain, "threshold": threshold, "split": split,
                                                     "text": text, "label": label}) + "\n")
    return root


@pytest.fixture(scope="module")
def text_init(tmp_path_factory):
    return save_tiny_text_model(tmp_path_factory.mktemp("text-init") / "tiny.safetensors")


def test_clinc_intents_split_by_class_and_arsc_by_its_fixed_domains(clinc, arsc):
    splits = load_splits(DataSpec("clinc150", data_root=clinc), None)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [10, 2, 4]  # 16 intents: 1/8 val, 1/4 test
    assert not set(splits["train"].names) & (set(splits["val"].names) | set(splits["test"].names))
    assert all(count == 12 for count in splits["test"].counts().tolist())  # its own train/val/test rows together
    splits = load_splits(DataSpec("arsc", data_root=arsc), None)
    domains = {split: {name.split("/")[0] for name in classes.names} for split, classes in splits.items()}
    assert domains["test"] == set(ARSC_TEST_DOMAINS[:2]) and "music" in domains["train"]  # its test rows train
    assert not domains["train"] & domains["test"] and not domains["val"] & domains["test"]
    with pytest.raises(ValueError, match="split is fixed"):
        load_splits(DataSpec("arsc", data_root=arsc, split_seed=1), None)


def test_arsc_episodes_draw_both_classes_from_one_task(arsc):
    train = load_splits(DataSpec("arsc", data_root=arsc), None)["train"]
    sampler = ImageEpisodes(train, None, 2, 2, 3, within_group=True)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        picks = sampler.sample_indices(generator)
        tasks = {train.groups[int(torch.searchsorted(train.offsets, indices[0], right=True)) - 1]
                 for indices, _ in picks}
        sides = {train.texts[int(indices[0])].split()[0] for indices, _ in picks}
        assert len(tasks) == 1 and sides == {"great", "awful"}


def test_arsc_standard_tasks_have_fixed_supports_and_are_scored_per_task(arsc, text_init):
    tasks = arsc_test_tasks(arsc)
    assert [task.name for task in tasks] == [f"{d}/{t}" for d in ARSC_TEST_DOMAINS[:2] for t in ("t2", "t4", "t5")]
    assert all(sorted(map(len, task.support.values())) == [5, 5] and len(task.queries) == 16 for task in tasks)
    result = evaluate_fixed_tasks(fewshot_serve.load(text_init), tasks)
    assert len(result.scores) == 6 and all(0 <= score <= 1 for score in result.scores)
    assert all(16 * score == int(16 * score) for score in result.scores)  # a share of each task's 16 queries


@pytest.mark.parametrize("adapt_from", [3, 2])  # the head only; the last layer and the head
def test_meta_training_on_a_text_dataset_writes_a_text_model(clinc, text_init, tmp_path, adapt_from):
    config = TrainConfig(out=tmp_path / "text.safetensors", algorithm="maml",
                         data=DataSpec("clinc150", data_root=clinc), init=text_init, freeze_body=True,
                         adapt_from=adapt_from, prototype_head=True,
                         centre_features=True, ways=2, shots=1, queries=2, train_steps=2, meta_batch=2, iterations=3,
                         val_every=3, val_episodes=4)
    result = train(config, progress=False)
    network, recipe = load_model(result.model_path)
    assert recipe.input_kind == "text" and recipe.dataset == "clinc150" and network.config()["adapt_from"] == adapt_from
    assert network.feature_centre.abs().sum() > 0  # measured on the training intents
    trained = dict(network.named_parameters())
    initial = dict(load_model(text_init)[0].named_parameters())
    assert torch.equal(trained["layers.0.query.weight"], initial["layers.0.query.weight"])  # frozen
    moved = not torch.equal(trained["layers.1.query.weight"], initial["layers.1.query.weight"])
    assert moved == (adapt_from == 2)  # the last layer is meta-learned only where the inner loop adapts it
    adapted = fewshot_serve.load(result.model_path).adapt({"a": ["refund my order"], "b": ["play jazz"]})
    assert len(adapted.classify(["refund money"])) == 1


def test_meta_learning_from_a_unit_before_the_adapted_ones_trains_it_over_a_shorter_cache(clinc, text_init,
                                                                                            tmp_path):
    config = TrainConfig(out=tmp_path / "text.safetensors", algorithm="fomaml",
                         data=DataSpec("clinc150", data_root=clinc), init=text_init, freeze_body=True,
                         adapt_from=3, meta_learn_from=2, prototype_head=True, ways=2, shots=1, queries=2,
                         meta_batch=2, iterations=3, val_every=3, val_episodes=4)
    network, recipe = load_model(train(config, progress=False).model_path)
    assert network.config()["adapt_from"] == 3  # serving adapts the head only, as before
    trained, initial = dict(network.named_parameters()), dict(load_model(text_init)[0].named_parameters())
    assert torch.equal(trained["layers.0.query.weight"], initial["layers.0.query.weight"])  # cached: frozen
    assert not torch.equal(trained["layers.1.query.weight"], initial["layers.1.query.weight"])  # meta-learned


@pytest.mark.parametrize("options, message", [
    ({"meta_learn_from": 2, "adapt_from": 2}, r"must be in \[1, --adapt-from\)"),
    ({"meta_learn_from": 1, "adapt_from": 2, "data": DataSpec("omniglot")}, "for a text encoder"),
    ({"meta_learn_from": 1, "adapt_from": 2, "centre_features": True}, "not with --meta-learn-from"),
])
def test_meta_learn_from_refuses_what_it_cannot_do(clinc, text_init, tmp_path, options, message):
    settings = {"freeze_body": True, "data": DataSpec("clinc150", data_root=clinc), **options}
    with pytest.raises(ValueError, match=message):
        TrainConfig(out=tmp_path / "x.safetensors", init=text_init, **settings)


def test_text_datasets_need_a_text_model_and_the_cached_body(clinc, text_init, colour_model, tmp_path):
    with pytest.raises(ValueError, match="--freeze-body"):
        TrainConfig(out=tmp_path / "x.safetensors", data=DataSpec("clinc150", data_root=clinc), init=text_init)
    config = TrainConfig(out=tmp_path / "x.safetensors", data=DataSpec("clinc150", data_root=clinc),
                         init=colour_model, freeze_body=True, adapt_from=4)
    with pytest.raises(ValueError, match="is an image model; clinc150 needs a text model"):
        train(config, progress=False)
