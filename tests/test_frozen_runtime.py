"""Serving's frozen part (the layers the inner loop leaves alone) run by onnxruntime: the same
predictions as torch, exported once per model file and cached, refused where it does not apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_efficientnet_lite import SIZE, mixed_ensemble, recipe_for, tiny_lite

import fewshot_serve
from fewshot_serve import InputError
from fewshot_serve.files.model_file import save_model
from fewshot_serve.networks import ResNet12
from fewshot_serve.serving import frozen_runtime


def resnet_adapting_its_last_block() -> ResNet12:
    torch.manual_seed(4)
    network = ResNet12(3, (3, 4, 5, 6), SIZE, norm="fixed", adapt_from=3, lr_steps=2, prototype_head=True)
    with torch.no_grad():
        network.step_lrs.fill_(0.3)
    return network


NETWORKS = {
    "efficientnet head only": lambda: tiny_lite(centred=True, prototype_head=True, lr_steps=2, dtype=torch.float32),
    "resnet12 last block adapted": resnet_adapting_its_last_block,
    "mixed ensemble": lambda: mixed_ensemble(prototype_head=True, lr_steps=1, dtype=torch.float32)[0],
}


def saved(tmp_path, name: str):
    network = NETWORKS[name]().float()
    recipe = recipe_for(tiny_lite(dtype=torch.float32))  # 32x32 RGB for all three
    recipe.network = network.config()
    path = tmp_path / "model.safetensors"
    save_model(path, network, recipe)
    return path


def task(seed=0, classes="abc", shots=2, queries=4):
    rng = np.random.default_rng(seed)
    support = {c: [rng.integers(0, 256, (SIZE + 5, SIZE, 3), dtype=np.uint8) for _ in range(shots)] for c in classes}
    return support, [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(queries)]


@pytest.mark.parametrize("name", NETWORKS)
def test_onnxruntime_serves_what_torch_serves(tmp_path, name):
    path = saved(tmp_path, name)
    with_torch, with_onnxruntime = (fewshot_serve.load(path, "cpu", runtime=r) for r in ("torch", "onnxruntime"))
    assert with_torch.frozen_part_runtime is None and with_onnxruntime.frozen_part_runtime is not None
    assert fewshot_serve.load(path, "cpu").frozen_part_runtime is not None  # "auto" on a CPU picks onnxruntime
    runtime, batches = with_onnxruntime.frozen_part_runtime, []
    with_onnxruntime.frozen_part_runtime = lambda x: batches.append(len(x)) or runtime(x)
    support, queries = task()
    exact, fast = with_torch.adapt(support), with_onnxruntime.adapt(support)
    np.testing.assert_allclose(fast.support_losses, exact.support_losses, rtol=1e-5)
    for row, fast_row in zip(exact.classify(queries), fast.classify(queries)):
        np.testing.assert_allclose([fast_row[c] for c in "abc"], [row[c] for c in "abc"], atol=1e-5)
    assert batches == [6, 4]  # support and queries both went through onnxruntime


@pytest.mark.slow  # over 4 s on 2 cores: the full run's, not the quick tier's
def test_the_export_is_cached_per_model_file_and_a_damaged_entry_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv(frozen_runtime.CACHE_VARIABLE, str(tmp_path / "cache"))
    path = saved(tmp_path, "efficientnet head only")
    exports = []
    real_export = frozen_runtime.export_frozen_part
    monkeypatch.setattr(frozen_runtime, "export_frozen_part", lambda *a: exports.append(1) or real_export(*a))
    support, queries = task(1)
    first = fewshot_serve.load(path, "cpu").adapt(support).classify(queries)
    assert len(exports) == 1 and len(list((tmp_path / "cache").glob("frozen-part-*.onnx"))) == 1
    assert fewshot_serve.load(path, "cpu").adapt(support).classify(queries) == first and len(exports) == 1
    entry, = (tmp_path / "cache").glob("frozen-part-*.onnx")
    entry.write_bytes(b"not an onnx model")
    assert fewshot_serve.load(path, "cpu").adapt(support).classify(queries) == first and len(exports) == 2
    assert entry.read_bytes() != b"not an onnx model"


@pytest.mark.slow  # over 4 s on 2 cores: the full run's, not the quick tier's
def test_a_changed_model_file_is_exported_again_and_off_keeps_the_cache_in_memory(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(frozen_runtime.CACHE_VARIABLE, str(cache))
    path = saved(tmp_path, "efficientnet head only")
    fewshot_serve.load(path, "cpu")
    network, recipe = fewshot_serve.files.model_file.load_model(path)
    with torch.no_grad():
        network.conv_head.weight.mul_(2)
    save_model(path, network, recipe)
    fewshot_serve.load(path, "cpu")
    assert len(list(cache.glob("frozen-part-*.onnx"))) == 2
    monkeypatch.setenv(frozen_runtime.CACHE_VARIABLE, "off")
    network.conv_head.weight.data.mul_(2)
    save_model(path, network, recipe)
    assert fewshot_serve.load(path, "cpu").frozen_part_runtime is not None
    assert len(list(cache.glob("frozen-part-*.onnx"))) == 2


def test_runtimes_that_do_not_apply_are_refused_and_auto_keeps_torch(colour_model):
    with pytest.raises(InputError, match="runtime must be one of auto, torch, onnxruntime"):
        fewshot_serve.load(colour_model, "cpu", runtime="fast")
    with pytest.raises(InputError, match="needs device 'cpu' and a model whose inner loop leaves layers alone"):
        fewshot_serve.load(colour_model, "cpu", runtime="onnxruntime")
    assert fewshot_serve.load(colour_model, "cpu").frozen_part_runtime is None  # Conv4 adapts every layer
