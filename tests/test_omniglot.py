"""Integration on real Omniglot (the ../shared 8-alphabet subset): skips where the data is absent."""

import pytest
import torch

from fewshot_serve.data.episodes import ImageEpisodes
from fewshot_serve.data.sources import DataSpec, load_splits
from fewshot_serve.files.model_file import load_model
from fewshot_serve.training.evaluation import evaluate_episodes
from fewshot_serve.training.trainer import TrainConfig, train

pytestmark = pytest.mark.slow  # servers, browsers, subprocesses or real data: not in the quick tier


def test_short_fomaml_run_beats_80_percent_on_held_out_alphabets(tmp_path, omniglot_root):
    result = train(TrainConfig(
        out=tmp_path / "omniglot.safetensors", algorithm="fomaml", data=DataSpec("omniglot-subset", omniglot_root),
        ways=5, shots=1, queries=5, train_steps=3, test_steps=5, inner_lrs=(0.4,), meta_lr=3e-3, meta_batch=16,
        iterations=100, val_every=100, val_episodes=50, checkpoint_every=100,
    ), progress=False)
    network, recipe = load_model(result.model_path)
    splits = load_splits(DataSpec("omniglot-subset", omniglot_root), recipe.image_preprocessing())
    test_alphabets, train_alphabets = splits["test"], splits["train"]
    assert not set(test_alphabets.groups) & set(train_alphabets.groups)
    sampler = ImageEpisodes(test_alphabets, recipe.image_preprocessing(), ways=5, shots=1, queries=15)
    accuracy = evaluate_episodes(network, sampler, (0.4,), 5, episodes=200, seed=0, device=torch.device("cpu"))
    print(f"5-way 1-shot on held-out alphabets {sorted(set(test_alphabets.groups))}: "
          f"{accuracy.mean:.3f} ± {accuracy.ci95:.3f}")
    assert accuracy.mean - accuracy.ci95 > 0.80  # measured here: 0.910 ± 0.011
