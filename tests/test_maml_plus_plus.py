"""MAML++ options: learned per-step learning rates, per-step BatchNorm weights, multi-step loss,
and the schedules, checked against finite differences and a hand-written reference."""

import pytest
import torch
import torch.nn.functional as F
from test_meta_gradients import TASKS, WAYS, params_of, random_batch, tasks_of

from fewshot_serve.inner_loop import InnerLoop, adapt, predict
from fewshot_serve.networks import Conv4, SinusoidMLP
from fewshot_serve.training.meta_learning import Annealing, MetaLearner, meta_gradient

STEPS = 2
INNER = InnerLoop(inner_lrs=(0.3, 0.2), train_steps=STEPS, test_steps=STEPS)
STEP_WEIGHTS = [0.3, 0.7]


def tiny_maml_plus_plus(dtype=torch.float64) -> Conv4:
    """Conv4 with learned step lrs and per-step norms, all set to distinct non-trivial values."""
    torch.manual_seed(0)
    network = Conv4(in_channels=1, filters=3, image_size=16, norm_states=STEPS + 1, lr_steps=STEPS).to(dtype)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        network.head.weight.normal_(0, 0.5)
        network.head.bias.fill_(0.1)
        network.step_lrs.copy_(0.1 + 0.3 * torch.rand(network.step_lrs.shape, generator=g, dtype=dtype))
        for block in network.blocks:
            block.norm.weight.copy_(1 + 0.2 * torch.randn(block.norm.weight.shape, generator=g, dtype=dtype))
            block.norm.bias.copy_(0.1 * torch.randn(block.norm.bias.shape, generator=g, dtype=dtype))
    return network


def reference_forward(params, x, n_ref, state):
    """Conv4 by hand, with norm weights of row ``state`` and BN statistics of the first n_ref rows."""
    for i in range(4):
        x = F.conv2d(x, params[f"blocks.{i}.conv.weight"], params[f"blocks.{i}.conv.bias"], padding=1)
        ref = x[:n_ref]
        variance = ref.var((0, 2, 3), unbiased=False, keepdim=True)
        x = (x - ref.mean((0, 2, 3), keepdim=True)) / torch.sqrt(variance + 1e-5)
        weight, bias = params[f"blocks.{i}.norm.weight"][state], params[f"blocks.{i}.norm.bias"][state]
        x = F.max_pool2d(F.relu(x * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)), 2)
    return F.linear(x.flatten(1), params["head.weight"], params["head.bias"])


def reference_multi_step_loss(meta, task):
    """Second-order MAML++ query loss of one task, written from the paper's definitions."""
    xs, ys, xq, yq = task
    fast_names = ["blocks.0.conv.weight", "blocks.0.conv.bias", "blocks.1.conv.weight", "blocks.1.conv.bias",
                  "blocks.2.conv.weight", "blocks.2.conv.bias", "blocks.3.conv.weight", "blocks.3.conv.bias",
                  "head.weight", "head.bias"]
    fast = {k: meta[k].repeat(WAYS, 1) if k == "head.weight" else meta[k].repeat(WAYS) if k == "head.bias" else meta[k]
            for k in fast_names}
    total = 0.0
    for step in range(STEPS):
        loss = F.cross_entropy(reference_forward({**meta, **fast}, xs, len(xs), step), ys)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
        fast = {k: v - meta["step_lrs"][i, step] * g for i, ((k, v), g) in enumerate(zip(fast.items(), grads))}
        logits = reference_forward({**meta, **fast}, torch.cat([xs, xq]), len(xs), step + 1)[len(xs):]
        total = total + STEP_WEIGHTS[step] * F.cross_entropy(logits, yq)
    return total


def test_fast_weights_exclude_learned_lrs_and_per_step_norms():
    network = tiny_maml_plus_plus()
    assert network.fast_weight_names() == [f"blocks.{i}.conv.{p}" for i in range(4) for p in ("weight", "bias")] + [
        "head.weight", "head.bias"]
    assert network.step_lrs.shape == (10, STEPS)
    assert network.blocks[0].norm.weight.shape == (STEPS + 1, 3)


def test_meta_gradient_matches_hand_written_reference():
    network, batch = tiny_maml_plus_plus(), random_batch()
    theta = params_of(network)
    grads, loss, _ = meta_gradient(network, theta, batch, INNER, first_order=False, vectorize=False,
                                   step_weights=STEP_WEIGHTS)
    meta = {k: v.clone().requires_grad_() for k, v in theta.items()}
    total = sum(reference_multi_step_loss(meta, task) for task in tasks_of(batch)) / TASKS
    expected = dict(zip(meta, torch.autograd.grad(total, list(meta.values()))))
    assert loss.item() == pytest.approx(total.item(), rel=1e-10)
    for key in theta:
        torch.testing.assert_close(grads[key], expected[key], rtol=1e-8, atol=1e-10)
    # Step 0 moves only the head weight: equal head rows give the body no gradient, and balanced
    # classes give the head bias none. Later steps move all; conv biases (rows 1, 3, 5, 7) barely,
    # as BatchNorm cancels a constant shift.
    # In the reference, which steps through the whole network, "no gradient" is zero only up to
    # rounding, whose size depends on the CPU's kernels (7e-19 was seen on AMX machines), so it is
    # checked against the size of the gradients that are not zero. The inner loop takes step 0
    # through the head alone, so there the body's step-0 rates get exactly zero.
    lr_grads = expected["step_lrs"].abs()
    assert lr_grads[[0, 2, 4, 6, 8, 9], 1].min() > 1e-6 and lr_grads[8, 0] > 1e-6
    rounding = 1e-9 * lr_grads.max()
    assert lr_grads[:8, 0].max() <= rounding and lr_grads[9, 0] <= rounding
    assert torch.count_nonzero(grads["step_lrs"][:8, 0]) == 0
    assert expected["blocks.1.norm.weight"].abs().sum(1).min() > 0, "every per-step norm row should get a gradient"


def test_meta_gradient_matches_central_finite_differences():
    network, batch = tiny_maml_plus_plus(), random_batch()
    theta = params_of(network)
    grads, _, _ = meta_gradient(network, theta, batch, INNER, first_order=False, step_weights=STEP_WEIGHTS)

    def meta_loss(params):
        return meta_gradient(network, params, batch, INNER, first_order=False, step_weights=STEP_WEIGHTS)[1].item()

    eps = 1e-7
    g = torch.Generator().manual_seed(11)
    for _ in range(2):
        direction = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in theta.items()}
        plus = meta_loss({k: theta[k] + eps * direction[k] for k in theta})
        minus = meta_loss({k: theta[k] - eps * direction[k] for k in theta})
        analytic = sum((grads[k] * direction[k]).sum() for k in theta).item()
        assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=1e-6, abs=1e-9)
    for key, index in (("step_lrs", (3, 1)), ("step_lrs", (9, 0)), ("blocks.2.norm.weight", (2, 1)),
                       ("blocks.0.norm.bias", (0, 0))):
        bump = torch.zeros_like(theta[key])
        bump[index] = eps
        up, down = meta_loss({**theta, key: theta[key] + bump}), meta_loss({**theta, key: theta[key] - bump})
        numeric = (up - down) / (2 * eps)
        assert grads[key][index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("first_order", [False, True])
def test_vectorized_and_looped_agree(first_order):
    network, batch = tiny_maml_plus_plus(), random_batch()
    theta = params_of(network)
    runs = [meta_gradient(network, theta, batch, INNER, first_order, vectorize, STEP_WEIGHTS)
            for vectorize in (True, False)]
    for key in theta:
        torch.testing.assert_close(runs[0][0][key], runs[1][0][key], rtol=1e-9, atol=1e-12)


def test_learned_lrs_steer_the_inner_loop():
    network = tiny_maml_plus_plus()
    batch = random_batch(tasks=1)
    start = network.task_parameters(params_of(network), WAYS)
    moved = adapt(network, start, batch.x_support[0], batch.y_support[0], (9.9,), STEPS).params
    assert not torch.equal(moved["blocks.0.conv.weight"], start["blocks.0.conv.weight"])
    frozen = {**start, "step_lrs": torch.zeros_like(start["step_lrs"])}
    still = adapt(network, frozen, batch.x_support[0], batch.y_support[0], (9.9,), STEPS).params
    for key in network.fast_weight_names():
        assert torch.equal(still[key], start[key]), key
    # the final state's norm rows are the last ones, whatever the number of steps
    assert torch.equal(moved["blocks.3.norm.weight"], start["blocks.3.norm.weight"][STEPS])
    longer = adapt(network, start, batch.x_support[0], batch.y_support[0], (9.9,), STEPS + 3).params
    assert torch.equal(longer["blocks.3.norm.weight"], start["blocks.3.norm.weight"][STEPS])


def test_multi_step_loss_weights_anneal_to_the_last_step():
    annealing = Annealing(multi_step_loss_iterations=100)
    assert annealing.step_weights(4, 0) == pytest.approx([0.25] * 4)
    middle = annealing.step_weights(4, 50)
    assert middle == pytest.approx([0.125] * 3 + [0.625]) and sum(middle) == pytest.approx(1.0)
    assert annealing.step_weights(4, 99)[0] == pytest.approx(0.03 / 4)
    assert annealing.step_weights(4, 100) is None
    assert Annealing().step_weights(4, 0) is None


def test_derivative_order_and_cosine_schedules():
    annealing = Annealing(first_order_iterations=10, cosine_meta_lr=True)
    assert [annealing.first_order("maml", i) for i in (0, 9, 10)] == [True, True, False]
    assert annealing.first_order("fomaml", 50)
    assert annealing.meta_lr(1e-3, 0, 101) == pytest.approx(1e-3)
    assert annealing.meta_lr(1e-3, 50, 101) == pytest.approx(0.5 * (1e-3 + 1e-5))
    assert annealing.meta_lr(1e-3, 100, 101) == pytest.approx(1e-5)
    assert Annealing().meta_lr(1e-3, 50, 101) == 1e-3


def test_learner_applies_the_schedules():
    network, batch = tiny_maml_plus_plus(), random_batch()
    annealing = Annealing(multi_step_loss_iterations=5, first_order_iterations=3, cosine_meta_lr=True)
    learner = MetaLearner(network, "maml", INNER, meta_lr=1e-3, iterations=10, vectorize=False, annealing=annealing)
    theta = params_of(network)
    direction, _, _ = learner.update_direction(batch, iteration=1)
    expected, _, _ = meta_gradient(network, theta, batch, INNER, first_order=True, vectorize=False,
                                   step_weights=annealing.step_weights(STEPS, 1))
    for key in theta:
        torch.testing.assert_close(direction[key], expected[key], rtol=1e-10, atol=1e-12)
    learner.apply(direction, iteration=9)
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_reptile_refuses_maml_plus_plus_options():
    with pytest.raises(ValueError, match="maml or fomaml"):
        MetaLearner(tiny_maml_plus_plus(), "reptile", INNER, meta_lr=1.0, iterations=10)
    with pytest.raises(ValueError, match="maml or fomaml"):
        MetaLearner(SinusoidMLP(8), "reptile", INNER, meta_lr=1.0, iterations=10,
                    annealing=Annealing(cosine_meta_lr=True))


def test_regression_network_learns_step_lrs_too():
    torch.manual_seed(0)
    network = SinusoidMLP(hidden=8, lr_steps=STEPS).double()
    network.reset_step_lrs((0.3, 0.2))
    assert network.step_lrs[:, 1].tolist() == [0.2] * 6
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 10, 1, generator=g, dtype=torch.float64) * 10 - 5
    from fewshot_serve.data.episodes import TaskBatch

    batch = TaskBatch(x[:, :5], torch.sin(x[:, :5]), x[:, 5:], torch.sin(x[:, 5:]), 1)
    grads, _, _ = meta_gradient(network, params_of(network), batch, INNER, first_order=False)
    assert grads["step_lrs"].abs().min() > 0


def test_serving_adapts_exactly_as_the_trainer_with_the_learned_recipe(tmp_path, glyph_tree):
    from fewshot_serve.data.sources import DataSpec
    from fewshot_serve.networks import build_network
    from fewshot_serve.serving.api import load
    from fewshot_serve.training.checkpoint import load_checkpoint
    from fewshot_serve.training.meta_learning import task_outcome
    from fewshot_serve.training.trainer import TrainConfig, train

    config = TrainConfig(out=tmp_path / "plus.safetensors", algorithm="maml",
                         data=DataSpec("folder", glyph_tree, image_size=16, channels=1), ways=3, shots=1, queries=2,
                         train_steps=2, test_steps=3, inner_lrs=(0.4, 0.3), meta_batch=2, iterations=4, val_every=2,
                         val_episodes=4, learned_lrs=True, per_step_norm=True, multi_step_loss=2,
                         first_order_iterations=1, cosine_meta_lr=True, meta_lr=0.01)
    result = train(config, progress=False)
    best = load_checkpoint(config.run_dir / "checkpoint.safetensors").best_params
    model = load(result.model_path, "cpu")
    recipe = model.recipe
    assert recipe.network["lr_steps"] == 2 and recipe.network["norm_states"] == 3 and recipe.test_steps == 3
    initial = torch.tensor([[0.4, 0.3]]).expand_as(best["step_lrs"])
    assert (best["step_lrs"] - initial).abs().max() > 1e-3, "the learned learning rates should have moved"

    trainer_network = build_network(recipe.network)
    trainer_network.load_state_dict(best)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 16, 16, generator=g)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    _, _, _, adapted = task_outcome(trainer_network, dict(trainer_network.named_parameters()), x, y, x, y, ways=3,
                                    inner_lrs=tuple(recipe.inner_lrs), steps=recipe.test_steps, first_order=True,
                                    composable=False)
    served = model.adapt_tensors(x, y, ["a", "b", "c"])
    # the same inner loop to the last bit: the head after the last step depends on every earlier step
    torch.testing.assert_close(served.network[0][-1].weight, adapted["head.weight"], rtol=0, atol=0)
    torch.testing.assert_close(served.network[0][-1].bias, adapted["head.bias"], rtol=0, atol=0)
    # and the frozen classifier (norms folded, the last state's norm row) classifies as the trainer predicts
    queries = torch.randn(4, 1, 16, 16, generator=g)
    expected = predict(trainer_network, adapted, x, queries).softmax(-1)
    torch.testing.assert_close(served.probabilities(queries), expected, rtol=1e-4, atol=1e-5)
