"""The opt-in compiled inner loop (serving's ``compile=True``) against the eager one: the same steps to
within float rounding, for a plain and a MAML++ network, and the same served probabilities."""

import pytest
import torch

from fewshot_serve.inner_loop import adapt
from fewshot_serve.model_file import Recipe, save_model
from fewshot_serve.networks import Conv4
from fewshot_serve.serving import load

WAYS, SHOTS = 3, 2


def task(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(WAYS * SHOTS, 1, 16, 16, generator=g), torch.arange(WAYS).repeat_interleave(SHOTS)


@pytest.mark.parametrize("maml_plus_plus", [False, True])
def test_compiled_steps_equal_eager_steps(maml_plus_plus):
    torch.manual_seed(0)
    network = Conv4(1, 4, 16, norm_states=4 if maml_plus_plus else 0, lr_steps=3 if maml_plus_plus else 0)
    with torch.no_grad():
        network.head.weight.normal_(0, 0.5)
        if maml_plus_plus:
            network.reset_step_lrs((0.5, 0.3, 0.2))
            for block in network.blocks:
                block.norm.weight.add_(0.1 * torch.randn_like(block.norm.weight))
    x, y = task()
    start = network.task_parameters({k: v.detach() for k, v in network.named_parameters()}, WAYS)
    eager = adapt(network, start, x, y, (0.5, 0.3), 4, first_order=True)
    compiled = adapt(network, start, x, y, (0.5, 0.3), 4, first_order=True, compiled=True)
    torch.testing.assert_close(compiled.support_losses, eager.support_losses, rtol=1e-5, atol=1e-6)
    for key, value in eager.params.items():
        torch.testing.assert_close(compiled.params[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_compiled_loop_is_first_order_only():
    network = Conv4(1, 4, 16)
    x, y = task()
    start = network.task_parameters(dict(network.named_parameters()), WAYS)
    with pytest.raises(ValueError, match="first order"):
        adapt(network, start, x, y, (0.5,), 2, first_order=False, compiled=True)


def test_served_probabilities_with_compile_equal_eager(tmp_path):
    torch.manual_seed(1)
    network = Conv4(1, 4, 16)
    recipe = Recipe(network=network.config(), preprocessing={"image_size": 16, "channels": 1, "invert": True,
                                                            "fit": "pad", "mean": [0.1], "std": [0.3]},
                    inner_lrs=[0.5], train_steps=3, test_steps=3, algorithm="fomaml", dataset="omniglot",
                    ways=WAYS, shots=1, queries=2)
    path = tmp_path / "tiny.safetensors"
    save_model(path, network, recipe)
    eager, compiled = load(path, "cpu"), load(path, "cpu", compile=True)
    compiled.warm_up([(WAYS, SHOTS)])
    assert compiled._compiled_shapes == {(WAYS * SHOTS, 1, 16, 16, WAYS)}
    x, y = task(seed=3)
    queries = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    expected = eager.adapt_tensors(x, y, WAYS).probabilities(queries)
    torch.testing.assert_close(compiled.adapt_tensors(x, y, WAYS).probabilities(queries), expected,
                               rtol=1e-4, atol=1e-5)
