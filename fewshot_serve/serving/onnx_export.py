"""Export an adapted classifier to ONNX, with its labels and preprocessing in the metadata."""

from __future__ import annotations

import copy
import json
import os
import warnings

import torch
from torch import nn

from ..files.atomic import atomic_output
from ..preprocessing import Preprocessing
from .onnx_classifier import LABELS_KEY, PREPROCESSING_KEY

INPUT_NAME, OUTPUT_NAME = "images", "probabilities"


def onnx_model(module: nn.Module, example: torch.Tensor, output_name: str = OUTPUT_NAME):
    """``module`` (float images ``[batch, ...]`` -> one tensor) as an ONNX ``ModelProto``, batch size free.

    A module on another device is exported from a CPU copy: ``Module.to`` would move the caller's own.
    """
    on_cpu = all(tensor.device.type == "cpu" for tensor in [*module.parameters(), *module.buffers()])
    cpu_module = module if on_cpu else copy.deepcopy(module).to("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            cpu_module, (example.cpu(),), dynamo=True, verbose=False, input_names=[INPUT_NAME],
            output_names=[output_name], dynamic_shapes=({0: torch.export.Dim("batch", max=4096)},),
        )
    return program.model_proto


def export_onnx(network: nn.Module, labels: list[str], preprocessing: Preprocessing, path: str | os.PathLike) -> None:
    """Write ``network`` (float images ``[batch, C, S, S]`` -> probabilities) to ``path`` atomically."""
    import onnx

    example = torch.zeros(2, preprocessing.channels, preprocessing.image_size, preprocessing.image_size)
    model = onnx_model(network, example)
    onnx.helper.set_model_props(model, {
        LABELS_KEY: json.dumps(labels),
        PREPROCESSING_KEY: json.dumps(preprocessing.to_dict()),
    })
    model.doc_string = (
        "fewshot-serve adapted classifier. Input 'images': float32 [batch, C, S, S], made from each image by "
        "the preprocessing in metadata '" + PREPROCESSING_KEY + "' (grayscale/RGB, fit, resize to S, optional "
        "inversion, /255, (x - mean) / std). Output 'probabilities': [batch, classes] in the order of '"
        + LABELS_KEY + "'."
    )
    with atomic_output(path) as temporary:
        onnx.save(model, str(temporary))
