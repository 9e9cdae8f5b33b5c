"""The adaptation API: load a model file, adapt it to a user's support set, classify queries.

An upload's path to a prediction::

    FewShotModel.adapt(support)                     this file: validate the request
      -> open_image / Preprocessing.to_uint8        preprocessing.py: decode, fit, resize as trained
         (TextPreprocessing.token_ids               text_preprocessing.py: a text model's texts -> token ids)
      -> OnnxFrozenPart                             frozen_runtime.py: on a CPU, the layers the inner
                                                    loop leaves alone, in onnxruntime, once per image
      -> inner_loop.adapt                           inner_loop.py: the same SGD steps as meta-training
    AdaptedClassifier.classify(queries)             this file: frozen part, adapted part; or
      -> MetaNetwork.fold                           networks/: adapted weights + norms folded in (torch, ONNX)
      -> CalibratedSoftmax                          calibration.py: the file's temperature for this shot count
    AdaptedClassifier.predict(queries)              this file: the top class, or "none of these"
      -> unknown_scores                             unknown.py: distance to the nearest class mean

The meta-learned weights are read, never written: every adaptation builds its own tensors, so
concurrent requests (threads of one server) cannot see each other's classes.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..calibration import CalibratedSoftmax, temperature_for, unsure_below
from ..devices import bf16_available, pick_device
from ..files.model_file import Recipe, load_model
from ..inner_loop import Adaptation, adapt
from ..networks import MetaNetwork
from ..preprocessing import ImageLike, Preprocessing, open_image
from ..text_preprocessing import TextPreprocessing, in_length_batches
from ..unknown import threshold_for, unknown_scores
from .assessment import Assessment, assess
from .frozen_runtime import OnnxFrozenPart

#: An example a model classifies: an image (a str is its path), or for a text model a string (the text).
Example = ImageLike

#: Request limits (documented in README.md); beyond them a request is refused with InputError.
#: (Per text, at most text_preprocessing.MAX_TEXT_CHARACTERS characters.)
MAX_CLASSES = 100
MAX_IMAGES_PER_CLASS = 100
MAX_SUPPORT_IMAGES = 500
MAX_QUERIES = 500
MAX_LABEL_LENGTH = 100


class InputError(ValueError):
    """A request that cannot be served as given; the message says what to change."""


RUNTIMES = ("auto", "torch", "onnxruntime")


def load(path: str | os.PathLike, device: str | torch.device | None = None, bf16: bool = False,
         runtime: str = "auto") -> FewShotModel:
    """Load a model file for serving. ``device=None``: CUDA when present, else CPU.

    ``runtime`` computes the frozen part (the layers the inner loop leaves alone; for the shipped
    models the whole backbone) for support and query images: ``"onnxruntime"`` (CPU only, float32,
    exported once and cached: :mod:`~fewshot_serve.serving.frozen_runtime`), ``"torch"``, or ``"auto"``:
    onnxruntime on a CPU for a model with a frozen part unless ``bf16`` is asked for, else torch.

    ``bf16=True`` classifies queries, and computes the support images' frozen part (the layers the
    inner loop does not adapt), under bfloat16 autocast where the device supports it natively
    (:func:`bf16_available`; ignored elsewhere): 2-4x faster on CPUs with AVX512-BF16 or AMX,
    probabilities within about 1e-2 of float32 (accuracy measured in benchmarks/bf16_accuracy.py).
    The inner loop's steps stay float32.
    """
    if runtime not in RUNTIMES:
        raise InputError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    device = pick_device(None if device is None else str(device))
    network, recipe = load_model(path, device)
    if network.task_kind != "classification":
        raise InputError(f"{path} is a {network.task_kind} model; serving classifies images and texts")
    model = FewShotModel(network, recipe, device, bf16 and bf16_available(device))
    automatic = device.type == "cpu" and network.has_per_image_frozen_part and not bf16 and not model.takes_text
    if runtime == "onnxruntime" or (runtime == "auto" and automatic):
        model.run_frozen_part_with_onnxruntime(hashlib.sha256(Path(path).read_bytes()).hexdigest())
    return model


class FewShotModel:
    """A meta-learned initialization ready to adapt to new classes."""

    def __init__(self, network: MetaNetwork, recipe: Recipe, device: torch.device, bf16: bool = False) -> None:
        self.network, self.recipe, self.device, self.bf16 = network, recipe, device, bf16
        self.preprocessing: Preprocessing | TextPreprocessing = recipe.input_preprocessing()
        self.takes_text = recipe.input_kind == "text"  # texts in (token ids), else images
        self._meta_params = {k: v.detach() for k, v in network.named_parameters()}
        for param in network.parameters():
            param.requires_grad_(False)
        self.frozen_part_runtime: OnnxFrozenPart | None = None  # None: torch computes it

    def run_frozen_part_with_onnxruntime(self, model_sha256: str) -> None:
        """Compute the frozen part of support and query images with onnxruntime from now on."""
        if self.takes_text:
            raise InputError("runtime='onnxruntime' is for image models; a text model runs in torch (runtime='torch')")
        if self.device.type != "cpu" or not self.network.has_per_image_frozen_part:
            raise InputError("runtime='onnxruntime' needs device 'cpu' and a model whose inner loop leaves layers "
                             "alone that compute each image on its own (a fixed-norm network with adapt_from > 0); "
                             f"this is {type(self.network).__name__} on {self.device.type}: use runtime='torch'")
        size, channels = self.preprocessing.image_size, self.preprocessing.channels
        params = self.network.at_step(self._meta_params, 0)
        example = torch.zeros(2, channels, size, size)
        self.frozen_part_runtime = OnnxFrozenPart(self.network, params, example, model_sha256)

    @property
    def example_noun(self) -> str:
        """What this model classifies, for messages: "text" or "image"."""
        return "text" if self.takes_text else "image"

    def prepare(self, examples: Sequence[Example], names: Sequence[str]) -> Tensor:
        """The network's input for ``examples`` (``names`` label them in error messages): images decoded
        and preprocessed into float ``[n, C, S, S]``, or texts tokenized into int64 ids ``[n, L]``."""
        if self.takes_text:
            return self.preprocessing.token_ids(examples, names)
        uint8 = np.stack([self.preprocessing.to_uint8(open_image(image, name)) for image, name in zip(examples, names)])
        return self.preprocessing.normalize(torch.from_numpy(uint8))

    def adapt(self, support: Mapping[str, Sequence[Example]], steps: int | None = None) -> AdaptedClassifier:
        """Adapt to ``{label: [images or texts...]}`` (``steps=None``: the file's test-time steps)."""
        started = time.perf_counter()
        labels = validate_support(support, self.example_noun)
        examples, names, targets = [], [], []
        for index, (label, members) in enumerate(zip(labels, support.values())):
            examples += list(members)
            names += [f"class {label!r} {self.example_noun} #{i + 1}" for i in range(len(members))]
            targets += [index] * len(members)
        x = self.prepare(examples, names).to(self.device)
        adapted = self.adapt_tensors(x, torch.tensor(targets, device=self.device), labels, steps)
        adapted.seconds = time.perf_counter() - started
        return adapted

    def adapt_tensors(
        self, x: Tensor, y: Tensor, labels: Sequence[str] | int, steps: int | None = None
    ) -> AdaptedClassifier:
        """Adapt to preprocessed support images ``x`` with targets ``y`` in ``range(len(labels))``.

        ``labels`` may be a class count, for callers that have no names (benchmarks).
        """
        started = time.perf_counter()
        labels = [str(i) for i in range(labels)] if isinstance(labels, int) else list(labels)
        steps = self.recipe.test_steps if steps is None else steps
        if not isinstance(steps, int) or not 0 <= steps <= 100:
            raise InputError(f"steps must be an integer in [0, 100], got {steps!r}")
        h = self._frozen_part(x)
        adaptation = self.adapt_features(x, h, y, len(labels), steps)
        losses = adaptation.support_losses.tolist()
        if not all(np.isfinite(losses)) or not all(torch.isfinite(p).all() for p in adaptation.params.values()):
            raise InputError("adaptation diverged on these images (non-finite loss); try fewer steps")
        params = {name: value.detach() for name, value in adaptation.params.items()}  # no graph kept alive
        return AdaptedClassifier(labels, self, losses, time.perf_counter() - started, params, x, h, y, steps)

    def adapt_features(self, x: Tensor, h: Tensor, y: Tensor, ways: int, steps: int) -> Adaptation:
        """The inner loop from the file's start on support images ``x`` whose frozen part is ``h``."""
        start = self.network.task_parameters(self._meta_params, ways)
        return adapt(self.network, start, x, y, self.recipe.inner_lrs, steps, first_order=True, h_support=h)

    def _frozen_part(self, x: Tensor) -> Tensor:
        """Images' frozen part (the support's once per adaptation, the queries' per request): by
        onnxruntime, or in torch (under bfloat16 autocast with ``bf16``), in float32 for what follows.
        Its weights are meta-parameters no task changes."""
        if self.frozen_part_runtime is not None:
            return self.frozen_part_runtime(x)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        params = self.network.at_step(self._meta_params, 0)
        with torch.no_grad(), autocast:  # never differentiated: the inner loop adapts what comes after it
            if not self.takes_text:
                return self.network.frozen_part(params, x).float()
            return in_length_batches(lambda ids: self.network.frozen_part(params, ids).float(), x,
                                     self.network.join_frozen)


    def query_frozen_part(self, x: Tensor, support_images: Tensor) -> Tensor:
        """The frozen part of preprocessed queries ``x``, as :meth:`_frozen_part` computes the
        support's; where it normalizes with support statistics, with those of ``support_images``."""
        if self.frozen_part_runtime is not None or self.network.has_per_image_frozen_part:
            return self._frozen_part(x.to(self.device))
        both = torch.cat([support_images, x.to(self.device)])
        with torch.no_grad():
            return self.network.frozen_part(self.network.at_step(self._meta_params, 0), both,
                                            n_ref=len(support_images))[len(support_images):]


@dataclass(frozen=True)
class Prediction:
    """One query's verdict: its top class, or None where it is none of the support set's classes."""

    label: str | None  # None: rejected as none of these (``reject_unknown=True`` only)
    probabilities: dict[str, float]  # over the classes, in the order of ``labels``; sums to 1
    unknown_score: float  # distance to the nearest class mean (unknown.py): larger is less like any class
    unknown: bool  # the score is above the model file's calibrated threshold (always False without reject_unknown)
    #: the top probability is below the model file's "unsure" level (calibration.py): worth a second look
    unsure: bool = False

    def to_dict(self) -> dict:
        return {"label": self.label, "probabilities": self.probabilities, "unknown_score": self.unknown_score,
                "unknown": self.unknown, "unsure": self.unsure}


def validate_support(support: Mapping[str, Sequence[Example]], noun: str = "image") -> list[str]:
    """Check a support set's shape and names (``noun``: what its examples are); returns the cleaned labels in order."""
    if not isinstance(support, Mapping):
        raise InputError(f"the support set must be a mapping {{label: [{noun}s, ...]}}")
    if len(support) < 2:
        raise InputError(f"at least 2 classes are needed, got {len(support)}")
    if len(support) > MAX_CLASSES:
        raise InputError(f"at most {MAX_CLASSES} classes per request, got {len(support)}")
    labels, total = [], 0
    for name, images in support.items():
        label = name.strip() if isinstance(name, str) else ""
        if not label:
            raise InputError(f"class names must be non-empty text, got {name!r}")
        if len(label) > MAX_LABEL_LENGTH:
            raise InputError(f"class name {label[:20]!r}... is longer than {MAX_LABEL_LENGTH} characters")
        if label in labels:
            raise InputError(f"class name {label!r} is used twice")
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            raise InputError(f"class {label!r}: give a list of {noun}s")
        if len(images) == 0:
            raise InputError(f"class {label!r} has no {noun}s")
        if len(images) > MAX_IMAGES_PER_CLASS:
            raise InputError(f"class {label!r} has {len(images)} {noun}s; at most {MAX_IMAGES_PER_CLASS} per class")
        labels.append(label)
        total += len(images)
    if total > MAX_SUPPORT_IMAGES:
        raise InputError(f"{total} support {noun}s; at most {MAX_SUPPORT_IMAGES} per request")
    return labels


def check_queries(queries: Sequence[Example], noun: str = "image") -> None:
    """Refuse a query list that is not a list, is empty, or is over the limit (``noun``: what its items are)."""
    if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence):
        raise InputError(f"queries must be a list of {noun}s")
    if len(queries) == 0:
        raise InputError(f"no query {noun}s given")
    if len(queries) > MAX_QUERIES:
        raise InputError(f"{len(queries)} queries; at most {MAX_QUERIES} per request")


@dataclass
class AdaptedClassifier:
    """A classifier for one user's classes: the adapted weights, their labels and the model they adapt."""

    labels: list[str]
    model: FewShotModel
    support_losses: list[float]  # support loss before each inner step
    seconds: float  # wall time of adapt()
    params: dict[str, Tensor]  # the adapted weights (what the rest of the network runs on the frozen part)
    support_images: Tensor = field(repr=False)  # preprocessed; the folded network's norms may need them
    support_features: Tensor = field(repr=False)  # their frozen part, computed once
    support_targets: Tensor = field(repr=False)  # class indices into ``labels``
    steps: int = 0  # inner steps taken
    _assessment: Assessment | None = field(default=None, init=False, repr=False)

    def assessment(self) -> Assessment:
        """How well this classifier will do, from its support set alone: the accuracy of adaptations
        with the same inner loop, each holding out one image of every class, a 90% interval,
        per-class accuracy and the confusions (:mod:`~fewshot_serve.serving.assessment`). Computed
        once: the page shows it again beside every Classify."""
        if self._assessment is None:
            self._assessment = assess(self.labels, self.support_targets.cpu(), self._predict_held_out,
                                      self.model.example_noun)
        return self._assessment

    def _predict_held_out(self, held: Tensor) -> Tensor:
        """Adapt without the support images ``held`` (the same steps) and predict their classes."""
        keep = torch.ones(len(self.support_targets), dtype=torch.bool)
        keep[held] = False
        keep, held = keep.to(self.support_features.device), held.to(self.support_features.device)
        h_keep = self.support_features[keep]
        adaptation = self.model.adapt_features(self.support_images[keep], h_keep, self.support_targets[keep],
                                               len(self.labels), self.steps)
        with torch.inference_mode():  # support statistics (where a network has them) from the kept images
            h = torch.cat([h_keep, self.support_features[held]])
            outputs = self.model.network.adapted_part(adaptation.params, h, n_ref=len(h_keep))
        return outputs[len(h_keep):].argmax(1).cpu()

    @cached_property
    def softmax(self) -> CalibratedSoftmax:
        """Logits -> probabilities at the model file's temperature for this support set's smallest class."""
        calibration = self.model.recipe.probability_calibration
        return CalibratedSoftmax(temperature_for(calibration, int(torch.bincount(self.support_targets).min())))

    @property
    def unsure_below(self) -> float:
        """The top probability below which an answer is marked "unsure" (the model file's calibrated level)."""
        return unsure_below(self.model.recipe.probability_calibration)

    @cached_property
    def network(self) -> nn.Sequential:
        """The adapted classifier as one plain eval-mode network, images -> probabilities: the folded
        network (images -> logits), then :attr:`softmax`. What torch classifies with and ONNX exports.
        Built on first use, since folding a backbone's weights costs about as much as the inner loop,
        and a model whose frozen part runs in onnxruntime classifies without it."""
        return nn.Sequential(self.model.network.fold(self.params, self.support_images), self.softmax)

    def probabilities(self, x: Tensor) -> Tensor:
        """Preprocessed input (float images ``[n, C, S, S]`` or token ids ``[n, L]``) -> ``[n, ways]``."""
        device = self.model.device
        if self.model.frozen_part_runtime is not None or self.model.takes_text:
            # the frozen part by onnxruntime (or a text's in batches of similar length), the rest unfolded
            h = self.model._frozen_part(x.to(device))
            with torch.inference_mode():
                return self.softmax(self.model.network.adapted_part(self.params, h))
        x = x.to(device)
        x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
        with torch.inference_mode():
            if not self.model.bf16:
                return self.network(x)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = self.network[0](x)
            return self.softmax(logits.float())  # the softmax in float32: rows sum to 1

    def classify(self, queries: Sequence[Example]) -> list[dict[str, float]]:
        """Class probabilities (summing to 1) for each query (an image, or a text), in the order of ``labels``."""
        rows = self.probabilities(self._prepare_queries(queries)).cpu().tolist()
        return [dict(zip(self.labels, row)) for row in rows]

    def predict(self, queries: Sequence[Example], reject_unknown: bool = False) -> list[Prediction]:
        """Each query's top class and probabilities, and its "none of these" score.

        ``reject_unknown``: a query whose score is above the model file's calibrated threshold gets
        no label (:attr:`unknown_threshold`; the rate of wrongly rejected queries it was calibrated for
        is in the recipe and in the model card). Files without a calibration refuse it.
        """
        if not isinstance(reject_unknown, bool):
            raise InputError(f"reject_unknown must be True or False, got {reject_unknown!r}")
        if not self.model.network.head_keys:
            raise InputError(f"a {type(self.model.network).__name__} has no class features to predict with")
        threshold = self.unknown_threshold if reject_unknown else math.inf
        x = self._prepare_queries(queries)
        h_query, n_support = self.model.query_frozen_part(x, self.support_images), len(self.support_features)
        with torch.inference_mode():
            h = self.model.network.join_frozen([self.support_features, h_query])
            features = self.model.network.head_input(self.params, h, n_ref=n_support)
            logits = self.model.network.head_logits(self.params, features[n_support:])
            probabilities = self.softmax(logits)
            scores = unknown_scores(features, self.support_targets, len(self.labels))
        predictions = []
        for row, score in zip(probabilities.tolist(), scores.tolist()):
            unknown = score > threshold
            label = None if unknown else self.labels[max(range(len(row)), key=row.__getitem__)]
            predictions.append(Prediction(label, dict(zip(self.labels, row)), score, unknown,
                                          max(row) < self.unsure_below))
        return predictions

    @property
    def unknown_threshold(self) -> float:
        """The score above which a query is none of these classes, for this support set's shot count."""
        calibration = self.model.recipe.unknown_calibration
        if not calibration:
            raise InputError("this model file has no 'none of these' calibration; calibrate a copy with "
                             "`fewshot-serve calibrate-unknown MODEL --out FILE`, or classify without reject_unknown")
        return threshold_for(calibration, int(torch.bincount(self.support_targets).min()))

    def _prepare_queries(self, queries: Sequence[Example]) -> Tensor:
        """Check a query list and preprocess it into the network's input (:meth:`FewShotModel.prepare`)."""
        check_queries(queries, self.model.example_noun)
        return self.model.prepare(queries, [f"query #{i + 1}" for i in range(len(queries))])

    def export_onnx(self, path: str | os.PathLike) -> None:
        """Write this classifier as ONNX (float images ``[batch, C, S, S]`` -> probabilities).

        Its metadata holds the labels and the preprocessing, which :class:`OnnxClassifier` applies.
        Text classifiers are refused: their tokenizer has no ONNX form here, and a model taking token
        ids would leave every user to re-implement it exactly.
        """
        if self.model.takes_text:
            raise InputError("ONNX export is for image classifiers; a text classifier is served by this API "
                             "(or the app's classify endpoint), which tokenizes as the model was trained")
        from .onnx_export import export_onnx

        export_onnx(self.network, self.labels, self.model.preprocessing, path)


