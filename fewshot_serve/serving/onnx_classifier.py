"""Classify with an exported ONNX classifier using onnxruntime, numpy and Pillow alone (no torch)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from ..preprocessing import ImageLike, Preprocessing, open_image

#: ONNX metadata keys, shared with onnx_export (which needs torch; this module does not).
LABELS_KEY = "fewshot_serve.labels"
PREPROCESSING_KEY = "fewshot_serve.preprocessing"


class OnnxClassifier:
    """Load a ``task.onnx`` written by ``export_onnx`` and classify images with onnxruntime."""

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=list(providers))
        metadata = self.session.get_modelmeta().custom_metadata_map
        if LABELS_KEY not in metadata or PREPROCESSING_KEY not in metadata:
            raise ValueError(f"{path}: not a fewshot-serve ONNX classifier "
                             "(its labels/preprocessing metadata is missing)")
        self.labels: list[str] = json.loads(metadata[LABELS_KEY])
        self.preprocessing = Preprocessing.from_dict(json.loads(metadata[PREPROCESSING_KEY]))
        self.input_name = self.session.get_inputs()[0].name

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed float32 ``[n, C, S, S]`` -> ``[n, classes]``."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def classify(self, images: Sequence[ImageLike]) -> list[dict[str, float]]:
        if len(images) == 0:
            raise ValueError("no images given")
        uint8 = np.stack([self.preprocessing.to_uint8(open_image(image, f"image #{i + 1}"))
                          for i, image in enumerate(images)])
        rows = self.probabilities(self.preprocessing.normalize(uint8))
        return [dict(zip(self.labels, map(float, row))) for row in rows]
