"""The seed experiment of the MAML paper: meta-learned vs jointly pretrained sinusoid regressors."""

import pytest
import torch
import torch.nn.functional as F

from fewshot_serve.data.episodes import SinusoidTasks
from fewshot_serve.data.sources import DataSpec
from fewshot_serve.files.model_file import load_model
from fewshot_serve.networks import SinusoidMLP
from fewshot_serve.training.evaluation import evaluate_episodes
from fewshot_serve.training.trainer import TrainConfig, train

ITERATIONS, META_BATCH, SHOTS, TEST_STEPS, LR = 4000, 25, 5, 10, 0.01
CPU = torch.device("cpu")


def pretrained_jointly() -> SinusoidMLP:
    """The paper's baseline: the same net regressing all tasks' points at once, as many updates."""
    torch.manual_seed(0)
    network = SinusoidMLP()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    tasks, generator = SinusoidTasks(SHOTS, 10), torch.Generator().manual_seed(0)
    for _ in range(ITERATIONS):
        batch = tasks.sample(generator, META_BATCH, CPU)
        loss = F.mse_loss(network(batch.x_query.reshape(-1, 1)), batch.y_query.reshape(-1, 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return network


def five_shot_mse(network) -> float:
    result = evaluate_episodes(network, SinusoidTasks(SHOTS, 50), (LR,), TEST_STEPS, 300, seed=99, device=CPU)
    return result.mean


@pytest.fixture(scope="module")
def baseline_mse() -> float:
    return five_shot_mse(pretrained_jointly())


@pytest.mark.slow
@pytest.mark.parametrize("algorithm, inner_steps, meta_lr", [("maml", 1, 1e-3), ("reptile", 5, 1.0)])
def test_meta_learning_beats_joint_pretraining_on_sinusoids(tmp_path, baseline_mse, algorithm, inner_steps, meta_lr):
    result = train(TrainConfig(
        out=tmp_path / "sinusoid.safetensors", algorithm=algorithm, data=DataSpec("sinusoid"), ways=1, shots=SHOTS,
        queries=10, train_steps=inner_steps, test_steps=TEST_STEPS, inner_lrs=(LR,), meta_lr=meta_lr,
        meta_batch=META_BATCH, iterations=ITERATIONS, val_every=ITERATIONS, val_episodes=50,
        checkpoint_every=ITERATIONS,
    ), progress=False)
    network, _ = load_model(result.model_path)
    meta_mse = five_shot_mse(network)
    print(f"{algorithm}: 5-shot MSE after {TEST_STEPS} steps {meta_mse:.3f}; pretrained jointly {baseline_mse:.3f}")
    assert meta_mse < 0.5 * baseline_mse  # measured: MAML 0.71 vs 3.05, Reptile 1.35 vs 3.05
