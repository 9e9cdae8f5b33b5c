"""The model file: meta-learned weights in safetensors, the adaptation recipe in its metadata.

The recipe is everything serving needs to adapt exactly as meta-training did: architecture,
preprocessing, per-step inner learning rates and step counts. MAML++'s learned learning rates and
per-step norm weights are tensors of the file like any weight; the recipe's network entry says
whether the network has them (``lr_steps``, ``norm_states``: format version 2; version 1 files,
which predate them, still load). Files are untrusted input: loading checks the recipe's values
(sizes before anything is allocated; the rules a network's own constructor enforces, such as what
an ensemble member may be, as it is built) and every tensor's name, shape, dtype and finiteness
before anything is computed, and says precisely what is wrong.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..calibration import calibration_problems as probability_calibration_problems
from ..inner_loop import ALGORITHMS, InnerLoop
from ..networks import ARCHITECTURES, MetaNetwork, build_network, config_problems
from ..networks.config_checks import MAX_STEPS, is_int
from ..preprocessing import Preprocessing
from ..text_preprocessing import TextPreprocessing, is_text_recipe
from ..unknown import calibration_problems
from .atomic import atomic_output
from .weight_storage import decode, encode, storage_dtype

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
RECIPE_KEY = "fewshot_serve.recipe"
#: How a file's weights were made: a meta-learning algorithm, supervised pretraining alone, or
#: imported from elsewhere (``fewshot-serve import-backbone``).
RECIPE_ALGORITHMS = (*ALGORITHMS, "pretrain", "import")
#: The ``class_counts`` entry of weights trained on the training and validation classes together (a
#: recipe's final run): their validation classes are no longer unseen.
SEEN_VALIDATION = "train+val"


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and the problem."""


@dataclass
class Recipe:
    """How a model was meta-trained and how serving must adapt it."""

    network: dict[str, Any]
    preprocessing: dict[str, Any] | None  # None for non-image tasks (sinusoid)
    inner_lrs: list[float]
    train_steps: int
    test_steps: int
    algorithm: str
    dataset: str
    ways: int
    shots: int
    queries: int
    class_counts: dict[str, int] = field(default_factory=dict)
    split_seed: int = 0
    val_metric: dict[str, float] = field(default_factory=dict)
    command: str = ""
    #: "none of these": the score's thresholds per shot count and how they were calibrated
    #: (:mod:`fewshot_serve.unknown`; ``fewshot-serve calibrate-unknown``); empty: not calibrated
    unknown_calibration: dict[str, Any] = field(default_factory=dict)
    #: the softmax temperatures per shot count and the "unsure" level, and what they were fitted on
    #: (:mod:`fewshot_serve.calibration`; ``fewshot-serve calibrate``); empty: temperature 1
    probability_calibration: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def inner_loop(self) -> InnerLoop:
        return InnerLoop(tuple(self.inner_lrs), self.train_steps, self.test_steps)

    @property
    def input_kind(self) -> str:
        """What the model classifies: "text" or "image" (also for a sinusoid file, which has neither)."""
        return "text" if is_text_recipe(self.preprocessing) else "image"

    def image_preprocessing(self) -> Preprocessing:
        if self.preprocessing is None or self.input_kind != "image":
            raise ModelFileError("this model has no image preprocessing (it is not an image model)")
        return Preprocessing.from_dict(self.preprocessing)

    def text_preprocessing(self) -> TextPreprocessing:
        if self.input_kind != "text":
            raise ModelFileError("this model has no text preprocessing (it is not a text model)")
        return TextPreprocessing.from_dict(self.preprocessing)

    def input_preprocessing(self) -> Preprocessing | TextPreprocessing:
        """The image or the text preprocessing, whichever the model takes."""
        return self.text_preprocessing() if self.input_kind == "text" else self.image_preprocessing()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def save_model(
    path: str | os.PathLike, network: MetaNetwork, recipe: Recipe, params: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write ``params`` (default: ``network``'s own weights) and ``recipe`` atomically to safetensors.

    ``dtype`` is how the weights are stored (float32; float16 or int8 for a smaller file:
    :mod:`~fewshot_serve.files.weight_storage`, :func:`store_weights`); loading always computes in float32.
    """
    tensors = encode(network.state_dict() if params is None else params, dtype)
    with atomic_output(path) as temporary:
        save_file(tensors, str(temporary), metadata={RECIPE_KEY: recipe.to_json()})


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[MetaNetwork, Recipe]:
    """Read and validate a model file; returns the network (on ``device``) and its recipe."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            recipe = _parse_recipe(metadata, path)
            network = _build_network(recipe, path)
            stored = {name: handle.get_tensor(name) for name in handle.keys()}
        shapes = {name: tensor.shape for name, tensor in network.state_dict().items()}
        try:
            tensors = decode(stored, shapes)
        except ValueError as error:
            raise ModelFileError(f"{path}: {error}") from None
    except ModelFileError:
        raise
    except Exception as error:  # safetensors' own errors for truncated or malformed files
        raise ModelFileError(f"{path}: not a readable safetensors model file ({error})") from None
    network.load_state_dict(tensors)
    return network.to(device).eval(), recipe


def set_test_steps(source: str | os.PathLike, steps: int, out: str | os.PathLike, command: str = "") -> Recipe:
    """Write a copy of ``source`` that adapts with ``steps`` inner steps when served; returns its recipe.

    Meta-training fixes the training step count, but serving may take more steps than training did
    (MAML++'s last learned rate and norm row carry on) and the best count is measured afterwards, on
    validation classes (``fewshot-serve evaluate --split val --steps N``). ``command``, the call
    that made the change, is appended to the recipe's ``command`` so the file still says how it was made.
    """
    if not is_int(steps, 1, MAX_STEPS):
        raise ValueError(f"test-time steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")
    network, recipe = load_model(source)
    return save_changed_copy(source, out, network, recipe, command, test_steps=steps)


def save_changed_copy(source: str | os.PathLike, out: str | os.PathLike, network: MetaNetwork, recipe: Recipe,
                      command: str, **changes: Any) -> Recipe:
    """Write ``source``'s ``network`` to ``out`` with ``changes`` to its ``recipe``, its weights stored as
    ``source``'s are, and ``command`` (the call that made the change) appended to the recipe's own, so the
    file still says how it was made; returns the new recipe."""
    recipe = replace(recipe, **changes, command="; ".join(filter(None, (recipe.command, command))))
    save_model(out, network, recipe, dtype=stored_dtype(source))
    return recipe


def store_weights(source: str | os.PathLike, out: str | os.PathLike, dtype: torch.dtype, command: str = "") -> Recipe:
    """Write a copy of ``source`` with its weights stored as ``dtype``: a smaller download, the same recipe.

    float16 halves the file, int8 nearly quarters it (:mod:`~fewshot_serve.files.weight_storage` says how
    far each moves a weight); serving still computes in float32 from the stored values, and what
    that does to accuracy is measured per model (models/cards/). A weight float16 cannot hold is
    refused and nothing is written. ``command`` is appended to the recipe's, as :func:`set_test_steps` does.
    """
    network, recipe = load_model(source)
    recipe = replace(recipe, command="; ".join(filter(None, (recipe.command, command))))
    save_model(out, network, recipe, dtype=dtype)
    return recipe


def stored_dtype(path: str | os.PathLike) -> torch.dtype:
    """How ``path``'s weights are stored (the ``dtype`` :func:`save_model` was given), from its
    header alone (:func:`~fewshot_serve.files.weight_storage.storage_dtype`)."""
    with safe_open(str(path), framework="pt") as handle:
        return storage_dtype([handle.get_slice(name).get_dtype() for name in handle.keys()])


def _parse_recipe(metadata: dict[str, str], path: Path) -> Recipe:
    if RECIPE_KEY not in metadata:
        raise ModelFileError(f"{path}: no {RECIPE_KEY!r} metadata; not a fewshot-serve model file")
    try:
        data = json.loads(metadata[RECIPE_KEY])
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{path}: recipe metadata is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: recipe metadata must be a JSON object")
    version = data.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ModelFileError(
            f"{path}: unknown format version {version!r}; this fewshot-serve reads versions "
            + ", ".join(map(str, READABLE_VERSIONS))
        )
    try:
        recipe = Recipe(**data)
    except TypeError as error:
        raise ModelFileError(f"{path}: recipe fields are wrong ({error})") from None
    problems = _recipe_problems(recipe)
    if problems:
        raise ModelFileError(f"{path}: invalid recipe: " + "; ".join(problems))
    return recipe


def _build_network(recipe: Recipe, path: Path) -> MetaNetwork:
    """The recipe's network; the rules a network's own constructor enforces are a bad recipe too."""
    try:
        return build_network(recipe.network)
    except ValueError as error:
        raise ModelFileError(f"{path}: invalid recipe: {error}") from None


def _recipe_problems(recipe: Recipe) -> list[str]:
    problems = calibration_problems(recipe.unknown_calibration)
    problems += probability_calibration_problems(recipe.probability_calibration)
    if not is_int(recipe.train_steps, 0, MAX_STEPS) or not is_int(recipe.test_steps, 0, MAX_STEPS):
        problems.append(f"step counts must be integers in [0, {MAX_STEPS}]")
    lrs = recipe.inner_lrs
    if not isinstance(lrs, list) or not 1 <= len(lrs) <= MAX_STEPS or not all(
        isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v < 1e3 for v in lrs
    ):
        problems.append("inner_lrs must be 1 to 100 finite non-negative numbers")
    if recipe.algorithm not in RECIPE_ALGORITHMS:
        problems.append(f"unknown algorithm {recipe.algorithm!r}")
    network_problems = config_problems(recipe.network)  # each architecture's own rules
    if network_problems:
        return problems + network_problems
    architecture = ARCHITECTURES[recipe.network["architecture"]]
    if architecture.input_kind != recipe.input_kind:
        return problems + [f"a {recipe.network['architecture']} network takes {architecture.input_kind}s, "
                           f"but the preprocessing is for {recipe.input_kind}s"]
    if recipe.input_kind == "text":
        return problems + _text_preprocessing_problems(recipe)
    shapes = architecture.input_shapes(recipe.network)
    return problems + (_preprocessing_problems(recipe, shapes) if shapes else [])


def _text_preprocessing_problems(recipe: Recipe) -> list[str]:
    """The recipe's tokenizer loads, and its longest sequence fits the encoder's position table."""
    try:
        preprocessing = TextPreprocessing.from_dict(recipe.preprocessing)
    except (TypeError, ValueError) as error:
        return [f"bad text preprocessing ({error})"]
    if preprocessing.max_length > recipe.network.get("max_positions", 0):
        return ["text preprocessing's max_length exceeds the encoder's max_positions"]
    return []


def _preprocessing_problems(recipe: Recipe, input_shapes: list[tuple[Any, Any]]) -> list[str]:
    """The recipe's preprocessing, and that it makes the image side and channels the network takes."""
    try:
        preprocessing = Preprocessing.from_dict(recipe.preprocessing or {})
    except (TypeError, ValueError, KeyError) as error:
        return [f"bad preprocessing ({error})"]
    made = (preprocessing.image_size, preprocessing.channels)
    return [("" if len(input_shapes) == 1 else f"member {i}: ") + "preprocessing image size/channels disagree "
            "with the network" for i, shape in enumerate(input_shapes) if shape != made]
