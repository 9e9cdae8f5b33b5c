"""fewshot-serve: few-shot image classification from a meta-learned (MAML / FOMAML / Reptile) initialization.

    model = fewshot_serve.load("models/photos-resnet12.safetensors")
    adapted = model.adapt({"alpha": [img1, img2], "beta": [img3]})
    adapted.classify([query])            # [{"alpha": 0.93, "beta": 0.07}]

Names are imported on first use, so ``OnnxClassifier`` works where torch is not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load": "serving",
    "FewShotModel": "serving",
    "AdaptedClassifier": "serving",
    "InputError": "serving",
    "ImageError": "preprocessing",
    "Preprocessing": "preprocessing",
    "OnnxClassifier": "onnx_classifier",
    "ModelFileError": "model_file",
    "Recipe": "model_file",
    "load_model": "model_file",
    "save_model": "model_file",
    "set_test_steps": "model_file",
    "store_weights": "model_file",
    "adapt": "inner_loop",
    "MetaLearner": "meta_learning",
    "InnerLoop": "meta_learning",
    "TaskBatch": "meta_learning",
    "meta_gradient": "meta_learning",
    "reptile_displacement": "meta_learning",
    "Conv4": "networks",
    "ResNet12": "networks",
    "FeatureEnsemble": "networks",
    "ensemble_models": "ensembling",
    "SinusoidMLP": "networks",
    "TrainConfig": "trainer",
    "PretrainConfig": "pretraining",
    "Credentials": "auth",
    "Annealing": "meta_learning",
    "DataSpec": "sources",
    "evaluate_episodes": "evaluation",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fewshot_serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
