"""fewshot-serve: few-shot image and text classification from a meta-learned (MAML / FOMAML / Reptile) initialization.

    model = fewshot_serve.load("models/photos-resnet12.safetensors")
    adapted = model.adapt({"alpha": [img1, img2], "beta": [img3]})
    adapted.classify([query])            # [{"alpha": 0.93, "beta": 0.07}]

    text = fewshot_serve.load("models/text-minilm.safetensors")   # texts instead of images
    text.adapt({"refund": ["I want my money back"], "weather": ["will it rain today"]})

Names are imported on first use, so ``OnnxClassifier`` works where torch is not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load": "serving.api",
    "FewShotModel": "serving.api",
    "AdaptedClassifier": "serving.api",
    "Prediction": "serving.api",
    "Assessment": "serving.assessment",
    "calibrate_unknown": "training.unknown_calibration",
    "InputError": "serving.api",
    "ImageError": "preprocessing",
    "Preprocessing": "preprocessing",
    "TextError": "text_preprocessing",
    "TextPreprocessing": "text_preprocessing",
    "OnnxClassifier": "serving.onnx_classifier",
    "ModelFileError": "files.model_file",
    "Recipe": "files.model_file",
    "load_model": "files.model_file",
    "save_model": "files.model_file",
    "set_test_steps": "files.model_file",
    "store_weights": "files.model_file",
    "adapt": "inner_loop",
    "MetaLearner": "training.meta_learning",
    "InnerLoop": "inner_loop",
    "TaskBatch": "data.episodes",
    "meta_gradient": "training.meta_learning",
    "reptile_displacement": "training.meta_learning",
    "Conv4": "networks",
    "ResNet12": "networks",
    "FeatureEnsemble": "networks",
    "EfficientNetLite": "networks",
    "BertEncoder": "networks",
    "ensemble_models": "training.ensembling",
    "SinusoidMLP": "networks",
    "TrainConfig": "training.trainer",
    "PretrainConfig": "training.pretraining",
    "Credentials": "serving.auth",
    "Annealing": "training.meta_learning",
    "DataSpec": "data.sources",
    "evaluate_episodes": "training.evaluation",
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
