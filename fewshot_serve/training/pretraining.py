"""Supervised pretraining: the first stage of "pretrain, then meta-learn" (Ye & Chao, ICLR 2022).

A ResNet-12 learns to tell all training classes apart (one linear classifier over them, SGD with
Nesterov momentum, cosine learning rate, label smoothing; photos are cropped, flipped and
colour-jittered, handwriting is shifted, and each Omniglot character's three rotations are classes
of their own, as in meta-training). Its BatchNorm running statistics are then folded into fixed
per-channel affines, and the result is exported as an ordinary model file: a fixed-norm ResNet-12
with the shared head row at zero, which serving can adapt as is and ``fewshot-serve train --init``
meta-learns from.

Validation is few-shot, on the validation classes: nearest class mean of the features
(:mod:`.nearest_mean`), ``val_ways``-way 1-shot and 5-shot; the best 5-shot epoch is exported
(handwriting validates 20-way: at 5 ways, nearest means are within a point of 100%). Like the
meta-trainer, the run folder holds ``checkpoint.safetensors`` (atomic, every
``checkpoint_every`` steps), ``log.jsonl`` and ``curves.png``; a resumed run ends with exactly the
weights of an uninterrupted one, since every random draw is a function of the seed and the step.

Two regularizers, both off by default, for the overfitting every long run here showed (validation
peaking, then falling, as training accuracy passed 90%): ``cutmix`` (the probability of mixing a
batch with :func:`~.augmentation.cutmix`) and ``ema`` (a decay: validation, export and the next
stage use an exponential moving average of the weights and BatchNorm statistics; the raw weights'
validation score is logged beside it as ``val_raw_metric``).

Two more, for handwriting's recipe, also off by default: ``distortion`` (random affine
distortions of the training drawings, :func:`~.augmentation.distort`) and ``cosine_scale`` (a
:class:`CosineClassifier` instead of the linear one). Measured on Omniglot (models/cards/omniglot-resnet12.md),
distortion raised validation 20-way 1-shot accuracy by half a point but left the test alphabets'
where it was; the cosine classifier was no better on validation.

``include_val_classes`` is for the final run of a recipe already fixed on validation: the
validation classes join the training classes (the test classes stay untouched), nothing is
validated, and every checkpoint exports the latest weights (or their average). ``stop_after``
ends the run after that many epochs of a longer cosine schedule: the way to repeat a reference
run that validation stopped early, on its exact learning-rate trajectory.

``init`` starts from another pretraining run's checkpoint (its network, classifier and BatchNorm
statistics; a fresh optimizer and schedule; with ``include_val_classes`` the validation classes'
classifier rows, which the checkpoint lacks, start fresh). The use it exists for is a short second run at a
larger ``image_size`` (FixRes, Touvron et al. 2019; progressive resizing): most of the epochs run
at the small, cheap size, and the network then learns the detail the larger one shows.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config_flags import WIDTHS, setting
from ..data.augmentation import augment_characters, augment_photos, cutmix
from ..data.datasets import OMNIGLOT_FOLDERS, ImageClasses
from ..data.episodes import ImageEpisodes
from ..data.sources import RESNET12_WIDTHS, DataSpec, load_splits, measured_preprocessing, standard_preprocessing
from ..devices import bf16_available, pick_device
from ..files.atomic import atomic_write_text
from ..files.model_file import SEEN_VALIDATION, Recipe
from ..networks import ResNet12, fixed_norm_params
from ..networks.resnet12 import RunningStatistics
from .checkpoint import TrainingState, fingerprint, load_checkpoint
from .nearest_mean import embed_images, nearest_mean_accuracy
from .run_folder import VALIDATION_SEED, RunFolder, keep_if_best

CLASSIFIER = "classifier."
RUNNING = "running."
AVERAGE = "ema."


@dataclass
class PretrainConfig:
    #: What a resumed run may change (:func:`~fewshot_serve.training.checkpoint.fingerprint`).
    volatile_settings: ClassVar[tuple[str, ...]] = ("resume", "command", "device", "out", "run_dir", "val_episodes",
                                                     "stop_after")

    out: Path = setting(help="the .safetensors file to write")
    data: DataSpec = field(default_factory=lambda: DataSpec("tiny-imagenet"))
    widths: tuple[int, ...] = setting(RESNET12_WIDTHS, "ResNet-12 block widths", parse=WIDTHS)
    epochs: int = setting(30, "epochs of the cosine learning-rate schedule")
    batch_size: int = setting(128, "images per SGD step")
    lr: float = setting(0.1, "SGD learning rate (Nesterov momentum 0.9), cosine-annealed to 0")
    weight_decay: float = setting(5e-4, "SGD weight decay")
    label_smoothing: float = 0.1
    cutmix: float = setting(0.0, "probability that a batch is CutMix-ed (a regularizer against overfitting)")
    cosine_scale: float = setting(0.0, "classify the training classes by cosine similarity times SCALE (e.g. 16) "
                                       "instead of a linear layer (0: linear)", metavar="SCALE")
    distortion: float = setting(0.0, "handwriting: random affine distortions of training drawings, STRENGTH in "
                                     "[0, 1] (1: rotation within ±10°, shear ±0.3, scale 0.8-1.2; 0: shifts only)",
                                metavar="STRENGTH")
    ema: float = setting(0.0, "validate and export a moving average of the weights with this decay per step "
                              "(e.g. 0.998; 0: the weights themselves)")
    val_every: int = 1  # epochs
    val_ways: int = setting(5, "classes per validation episode (e.g. 20 for handwriting, where 5 is too easy to "
                               "rank)")
    val_episodes: int = setting(200, "validation episodes (always the same ones)")
    checkpoint_every: int = setting(100, "steps between checkpoints")
    seed: int = setting(0, "seed of the initialization and of the batches")
    device: str | None = setting(None, "cpu, cuda, cuda:1 ... (default: cuda when present)")
    bf16: bool | None = setting(None, "bfloat16 autocast (default: where the hardware supports it)")
    # the exported file's adaptation recipe (what serving and `train --init` start from)
    adapt_from: int = 4
    inner_lrs: tuple[float, ...] = (0.5,)
    test_steps: int = 10
    run_dir: Path | None = setting(None, "checkpoint/log/plot folder (default: OUT.run)")
    resume: bool = setting(False, "continue from the run folder's checkpoint")
    init: Path | None = setting(None, "start from another pretraining run's checkpoint.safetensors (network, "
                                      "classifier, BatchNorm statistics), e.g. to fine-tune at a larger "
                                      "--image-size with a smaller --lr")
    include_val_classes: bool = setting(False, "the final run of a recipe fixed on validation: train on the "
                                               "training and validation classes (test classes stay untouched), "
                                               "validate nothing, export the latest weights")
    stop_after: int | None = setting(None, "end after this many epochs of the --epochs cosine schedule (repeat a run "
                                           "that validation stopped early on its exact learning-rate trajectory)",
                                     metavar="EPOCHS")
    command: str = ""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "val_every", "val_episodes", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1")
        if self.val_ways < 2:
            raise ValueError(f"val-ways must be at least 2, got {self.val_ways}")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.epochs:
            raise ValueError(f"stop-after must be between 1 and epochs ({self.epochs}), got {self.stop_after}")
        if not self.lr > 0:
            raise ValueError("lr must be positive")
        if not 0 <= self.cutmix <= 1:
            raise ValueError(f"cutmix is a probability, in [0, 1]; got {self.cutmix}")
        if self.cosine_scale < 0:
            raise ValueError(f"cosine-scale must be positive (or 0 for a linear classifier), got {self.cosine_scale}")
        if not 0 <= self.distortion <= 1:
            raise ValueError(f"distortion is a strength in [0, 1] (0: none), got {self.distortion}")
        if self.distortion and self.data.dataset not in OMNIGLOT_FOLDERS:
            raise ValueError("distortion is for handwriting (--dataset omniglot); photos are cropped, flipped and "
                             "colour-jittered")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema is a decay per step, in [0, 1) (0: off); got {self.ema}")
        self.out = Path(self.out)
        self.run_dir = Path(self.run_dir) if self.run_dir else self.out.with_suffix(".run")
        self.init = Path(self.init) if self.init else None
        if self.init is not None and not self.init.is_file():  # before minutes of loading data
            raise ValueError(f"--init {self.init}: no such file (give a pretraining run's checkpoint.safetensors)")


@dataclass
class PretrainResult:
    model_path: Path
    best_score: float | None  # validation 5-way 5-shot nearest-mean accuracy of the exported weights (None: none ran)
    best_epoch: int  # the exported weights' epoch
    seconds: float


class CosineClassifier(torch.nn.Module):
    """Logits ``scale * cos(feature, class row)``: the classifier of Baseline++ (Chen et al., ICLR 2019).

    A linear classifier can separate the training classes by feature length and bias as well as
    by direction; what serving compares is direction only (unit-length features, nearest class
    mean or a head on them). Training on cosines asks the backbone for the very geometry it is
    used with. ``scale`` is fixed: with unit vectors a logit can be at most ``scale``, and it must
    be large enough for the softmax over thousands of classes to become confident.
    """

    def __init__(self, in_features: int, classes: int, scale: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(classes, in_features) / in_features ** 0.5)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))


def cosine_lr(base: float, step: int, total: int) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * step / max(total, 1)))


def pretrain(config: PretrainConfig, progress: bool = True) -> PretrainResult:
    """Pretrain as ``config`` says and export the best-validating backbone as a model file (with
    ``include_val_classes``, the latest)."""
    started = time.perf_counter()
    device = pick_device(config.device)
    bf16 = bf16_available(device) if config.bf16 is None else config.bf16
    spec = config.data
    preprocessing = standard_preprocessing(spec)
    if preprocessing is None:
        raise ValueError("pretraining needs an image dataset")
    splits = load_splits(spec, preprocessing)
    preprocessing = measured_preprocessing(preprocessing, splits["train"])
    handwriting = spec.dataset in OMNIGLOT_FOLDERS
    validating = not config.include_val_classes
    # validation classes after the training ones, so a checkpoint of the training classes alone keeps its labels
    trained_classes = splits["train"] if validating else splits["train"].joined(splits["val"])
    images, labels, n_classes = training_images(trained_classes, rotate=handwriting)
    augment = partial(augment_characters, distortion=config.distortion) if handwriting else augment_photos
    val_sampler = {shots: ImageEpisodes(splits["val"], preprocessing, config.val_ways, shots, 15) for shots in (1, 5)}
    class_counts = {k: len(v) for k, v in splits.items()}
    if not validating:
        class_counts = {SEEN_VALIDATION: len(trained_classes), "test": class_counts["test"]}

    torch.manual_seed(config.seed)
    network = ResNet12(preprocessing.channels, tuple(config.widths), preprocessing.image_size, norm="support")
    classifier = (CosineClassifier(network.feature_dim, n_classes, config.cosine_scale) if config.cosine_scale
                  else torch.nn.Linear(network.feature_dim, n_classes))
    network.to(device)
    classifier.to(device)
    running = {k: (m.to(device), v.to(device)) for k, (m, v) in network.running_statistics().items()}
    trained = list(network.named_parameters()) + [(CLASSIFIER + k, v) for k, v in classifier.named_parameters()]
    optimizer = torch.optim.SGD([p for _, p in trained], lr=config.lr, momentum=0.9, nesterov=True,
                                weight_decay=config.weight_decay)
    exported = ResNet12(preprocessing.channels, tuple(config.widths), preprocessing.image_size, norm="fixed",
                        adapt_from=config.adapt_from)
    recipe = Recipe(
        network=exported.config(), preprocessing=preprocessing.to_dict(), inner_lrs=list(config.inner_lrs),
        train_steps=config.test_steps, test_steps=config.test_steps, algorithm="pretrain", dataset=spec.dataset,
        ways=config.val_ways, shots=5, queries=15, class_counts=class_counts,
        split_seed=spec.split_seed, command=config.command,
    )

    steps_per_epoch = len(labels) // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{len(labels)} training images are fewer than one batch of {config.batch_size}")
    total = steps_per_epoch * config.epochs  # the cosine schedule's length
    last = total if config.stop_after is None else steps_per_epoch * config.stop_after
    run = RunFolder(config.run_dir, "accuracy")
    atomic_write_text(run.path / "classes.json", json.dumps({k: v.names for k, v in splits.items()}, indent=1))

    live = _checkpointed(trained, running)
    # the moving average of every live tensor, checkpointed beside them (AVERAGE + name)
    average = {k: v.detach().clone() for k, v in live.items()} if config.ema else {}

    def snapshot() -> dict[str, torch.Tensor]:
        tensors = {k: v.detach().clone() for k, v in live.items()}
        return {**tensors, **{AVERAGE + k: v.clone() for k, v in average.items()}}

    def export_params(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The backbone in ``tensors`` (named as in ``live``) as the exported fixed-norm network's
        weights, head at zero."""
        params = {k: tensors[k] for k, _ in network.named_parameters()}
        statistics = {key: (tensors[f"{RUNNING}{key}.mean"], tensors[f"{RUNNING}{key}.var"]) for key in running}
        fixed = fixed_norm_params(network, params, statistics)
        return {**fixed, "head.weight": torch.zeros_like(fixed["head.weight"]),
                "head.bias": torch.zeros_like(fixed["head.bias"]), "logit_scale": torch.ones_like(fixed["logit_scale"])}

    if config.init is not None:
        per_class = n_classes // len(trained_classes)  # classifier rows per class: 4 with rotations, else 1
        _start_from(config.init, live, new_classes=0 if validating else per_class * len(splits["val"]))
        with torch.no_grad():
            for key, value in average.items():
                value.copy_(live[key])
    exported_tensors = average or live
    state = TrainingState(0, snapshot(), export_params(exported_tensors), None, 0, None,
                          torch.zeros(1, dtype=torch.uint8), fingerprint(config))
    resumed = run.resume(config) if config.resume else None
    if resumed is not None:
        state = resumed
        with torch.no_grad():
            for key, value in live.items():
                value.copy_(state.weights[key])
            for key, value in average.items():
                value.copy_(state.weights[AVERAGE + key])
        optimizer.load_state_dict(state.optimizer)

    def few_shot_scores(params: dict[str, torch.Tensor]) -> dict[int, Any]:
        features = embed_images(exported, params, splits["val"].images, preprocessing.normalize, device)
        return {s: nearest_mean_accuracy(features, val_sampler[s], config.val_episodes, VALIDATION_SEED)
                for s in (1, 5)}

    def validate(epoch: int) -> None:
        params = export_params(exported_tensors)
        results = few_shot_scores(params)
        record = {"iteration": state.iteration, "epoch": epoch, "val_metric": results[5].mean,
                  "val_ci95": results[5].ci95, "val_1shot": results[1].mean}
        if average:  # what the average adds: the raw weights on the same episodes
            raw = few_shot_scores(export_params(live))
            record.update(val_raw_metric=raw[5].mean, val_raw_1shot=raw[1].mean)
        run.log.append(record)
        improved = keep_if_best(state, results[5].mean, epoch, params)
        raw_scores = f" (raw weights {record['val_raw_metric']:.4f}, {record['val_raw_1shot']:.4f})" if average else ""
        bar.write(f"epoch {epoch}: validation nearest-mean {config.val_ways}-way 5-shot {results[5].mean:.4f} "
                  f"± {results[5].ci95:.4f}, 1-shot {results[1].mean:.4f}{raw_scores}"
                  + (" (best)" if improved else ""))

    def checkpoint() -> None:
        if not validating:
            state.best_params = export_params(exported_tensors)
            state.best_iteration = state.iteration // steps_per_epoch
        state.weights = snapshot()
        state.optimizer = optimizer.state_dict()
        recipe.val_metric = {} if state.best_score is None else {"nearest_mean_5shot": state.best_score}
        run.save(state, config.out, exported, recipe, state.best_params)

    bar = tqdm(total=last, initial=state.iteration, desc="pretrain", disable=not progress)
    for split, classes in splits.items():
        shown = ", ".join(classes.names[:6]) + (", ..." if len(classes) > 6 else "")
        bar.write(f"{split}: {len(classes)} classes ({shown}); all in {run.path / 'classes.json'}")
    if not validating:
        bar.write("training on the training and validation classes: nothing is validated; the latest weights "
                  + ("(their moving average) " if average else "") + "are exported")
    permutation, permutation_epoch = None, -1
    first = state.iteration
    for step in range(first, last):
        epoch, index = divmod(step, steps_per_epoch)
        if epoch != permutation_epoch:
            generator = torch.Generator().manual_seed(config.seed * 7919 + epoch)
            permutation = torch.randperm(len(labels), generator=generator)
            permutation_epoch = epoch
        picks = permutation[index * config.batch_size : (index + 1) * config.batch_size]
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        # padding 4 at 32x32, scaled with the image so that crops shift objects by the same fraction
        crops = augment(images[picks], generator, padding=preprocessing.image_size // 8)
        mixed = cutmix(crops, generator, config.cutmix)
        x = preprocessing.normalize(mixed.images.to(device))
        x = x.contiguous(memory_format=torch.channels_last)
        y = labels[picks].to(device)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(config.lr, step, total)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = classifier(network.embed(dict(network.named_parameters()), x, running=running))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
        if mixed.kept < 1:
            pasted = F.cross_entropy(logits.float(), y[mixed.partner.to(device)],
                                     label_smoothing=config.label_smoothing)
            loss = mixed.kept * loss + (1 - mixed.kept) * pasted
        if not math.isfinite(loss.item()):
            raise run.diverged(f"pretraining diverged at step {step + 1}", loss.item(), "lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for key, value in average.items():
                value.lerp_(live[key].detach(), 1 - config.ema)
        state.iteration = done = step + 1
        accuracy = (logits.argmax(1) == y).float().mean().item()
        run.log.append({"iteration": done, "loss": loss.item(), "metric": accuracy})
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", acc=f"{accuracy:.3f}")
        epoch_done = done % steps_per_epoch == 0
        if validating and epoch_done and ((epoch + 1) % config.val_every == 0 or done == last):
            validate(epoch + 1)
        if done % config.checkpoint_every == 0 or epoch_done:
            checkpoint()
    bar.close()
    # the loop's last step ends an epoch, so it checkpointed (and exported) already, unless it took no step
    # (a resumed finished run) or, validating, validated nothing
    if state.best_score is None and (validating or state.iteration == first):
        if validating:
            validate(last // steps_per_epoch)
        checkpoint()
    return PretrainResult(config.out, state.best_score, state.best_iteration, time.perf_counter() - started)


def training_images(classes: ImageClasses, rotate: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The images pretraining classifies, their labels, and how many classes there are.

    With ``rotate`` (handwriting), each class also appears rotated by 90, 180 and 270 degrees as
    three classes of its own, numbered as :class:`~.episodes.ImageEpisodes` numbers them
    (``4 * class + quarter turns``): pretraining then learns the very classes meta-training samples.
    """
    labels = torch.repeat_interleave(torch.arange(len(classes)), classes.counts())
    if not rotate:
        return classes.images, labels, len(classes)
    turns = range(4)
    images = torch.cat([torch.rot90(classes.images, k, dims=(-2, -1)) for k in turns])
    return images, torch.cat([4 * labels + k for k in turns]), 4 * len(classes)


def _checkpointed(trained: list[tuple[str, torch.Tensor]], running: RunningStatistics) -> dict[str, torch.Tensor]:
    """The live tensors a checkpoint holds, under their names there: every trained weight, and each
    norm's running mean and variance. Updated in place by training, so one mapping serves saving,
    resuming and ``init`` alike."""
    tensors = dict(trained)
    for key, (mean, var) in running.items():
        tensors[f"{RUNNING}{key}.mean"], tensors[f"{RUNNING}{key}.var"] = mean, var
    return tensors


def _start_from(path: Path, targets: dict[str, torch.Tensor], new_classes: int = 0) -> None:
    """Copy a pretraining checkpoint's current weights and BatchNorm statistics into ``targets``
    (:func:`_checkpointed`); the classifier's last ``new_classes`` rows, for classes the checkpoint
    was not trained on, keep their fresh initialization.

    Only a checkpoint of ``fewshot-serve pretrain`` has what this needs: an exported model file lacks
    the classifier over the training classes and has its statistics folded away. Shapes must match
    (same widths, same training classes); the image size may differ, since convolutions do not
    depend on it.
    """
    try:
        source = load_checkpoint(path).weights
    except (KeyError, OSError, ValueError) as error:
        raise ValueError(f"--init {path}: not a training checkpoint ({error})") from error
    missing = sorted(set(targets) - set(source))
    if missing:
        raise ValueError(f"--init {path}: not a checkpoint of `fewshot-serve pretrain` with these widths "
                         f"(no {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    rows = {CLASSIFIER + "weight", CLASSIFIER + "bias"}
    known = len(source[CLASSIFIER + "weight"])  # a checkpoint that already knows the new classes gives every row
    fresh = new_classes if known == len(targets[CLASSIFIER + "weight"]) - new_classes else 0
    expected = {k: (v[: len(v) - fresh] if k in rows else v) for k, v in targets.items()}
    wrong = [k for k, v in expected.items() if source[k].shape != v.shape]
    if wrong:
        raise ValueError(f"--init {path}: {wrong[0]} has shape {tuple(source[wrong[0]].shape)}, here "
                         f"{tuple(expected[wrong[0]].shape)} (different widths or number of training classes?)")
    with torch.no_grad():
        for key, value in expected.items():
            value.copy_(source[key])
