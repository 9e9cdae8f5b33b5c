"""The offline meta-training loop: sample tasks, update, validate, checkpoint, export.

Everything a run produces lives in its run folder (``checkpoint.safetensors``, ``log.jsonl``,
``curves.png``) beside the exported model file. Checkpoints are written atomically every
``checkpoint_every`` iterations, so a killed run resumed with ``resume=True`` loses at most that
much work and, with the same seed, ends with exactly the weights an uninterrupted run would have.

Under ``torchrun`` the ranks share each meta-batch (:mod:`fewshot_serve.training.distributed`); rank 0
alone validates and writes. ``--resume`` then needs the run folder on a filesystem every rank
can read, as each rank restores the checkpoint itself.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm import tqdm

from ..config_flags import LEARNING_RATES, WIDTHS, setting
from ..data.sources import (
    ARCHITECTURES,
    TEXT_DATASETS,
    DataSpec,
    load_splits,
    measured_preprocessing,
    standard_network,
    standard_preprocessing,
    task_sampler,
)
from ..devices import pick_device
from ..files.model_file import SEEN_VALIDATION, Recipe, load_model
from ..inner_loop import ALGORITHMS, InnerLoop
from ..networks import MetaNetwork, PooledFeatureClassifier, build_network
from ..preprocessing import Preprocessing
from ..text_preprocessing import TextPreprocessing
from .checkpoint import TrainingState, fingerprint
from .distributed import Shard, join_from_environment, leave_process_group, sharded_step
from .evaluation import evaluate_episodes
from .feature_centre import centre_on_training_classes
from .frozen_body import AdaptedPart, CachedEpisodes, cache_frozen_part
from .meta_learning import REPTILE_REFUSES_MAML_PLUS_PLUS, Annealing, MetaLearner, vmap_is_faster
from .run_folder import VALIDATION_SEED, RunFolder, keep_if_best

MAML_PLUS_PLUS = "MAML++ (Antoniou et al. 2019; each off by default)"


@dataclass
class TrainConfig:
    #: What a resumed run may change (:func:`~fewshot_serve.training.checkpoint.fingerprint`).
    volatile_settings: ClassVar[tuple[str, ...]] = ("resume", "command", "device", "vectorize", "out", "run_dir")

    #: Settings renamed since checkpoints were first written: an old checkpoint's name -> today's.
    renamed_settings: ClassVar[dict[str, str]] = {"inner_steps": "train_steps"}

    out: Path = setting(help="the .safetensors file to write")
    algorithm: str = setting("maml", "the meta-learning algorithm", choices=ALGORITHMS)
    data: DataSpec = field(default_factory=lambda: DataSpec("omniglot"))
    init: Path | None = setting(None, "start from this model file's weights (e.g. from `fewshot-serve pretrain`); "
                                      "its architecture, preprocessing and dataset split are used")
    freeze_body: bool = setting(False, "with --init and --adapt-from > 0: meta-learn only the adapted blocks, head "
                                       "and temperature, on the frozen blocks' output cached once per image (much "
                                       "faster; no augmentation)")
    meta_learn_from: int | None = setting(None, "text, with --freeze-body: the outer loop also trains the units from "
                                                "UNIT up to --adapt-from (the inner loop still adapts from "
                                                "--adapt-from), caching only the units before UNIT (bert: 1-6)",
                                          metavar="UNIT")
    centre_features: bool = setting(False, "with a pretrained ResNet-12 or an imported backbone as --init: subtract "
                                           "the training classes' mean feature (measured once, stored in the model "
                                           "file) before normalizing (SimpleShot's CL2N)")
    prototype_head: bool = setting(False, "with a ResNet-12 or an EfficientNet-Lite as --init: each class's head row "
                                          "starts at its support features' mean (Proto-MAML), so that zero steps "
                                          "classify by nearest class mean and steps refine that")
    architecture: str | None = setting(None, "network (default: conv4, or the --init file's)", choices=ARCHITECTURES)
    widths: tuple[int, ...] | None = setting(None, "conv4: filters (default 64 grayscale, 32 colour); resnet12: 4 "
                                                   "block widths (default 64,160,320,640)", parse=WIDTHS)
    adapt_from: int = setting(0, "the first layer the inner loop adapts: resnet12 a block 0-4, 4 the head only "
                                 "(ANIL-style); efficientnet_lite a unit 0-18 (0 the stem, 1-16 blocks, 17 the head "
                                 "convolution, 18 the head only); bert a layer 1-7 (MiniLM: 6 the last transformer "
                                 "layer, 7 the head only)", metavar="UNIT")
    ways: int = setting(5, "classes per task")
    shots: int = setting(1, "support examples per class")
    queries: int = setting(15, "query examples per class")
    train_steps: int = setting(1, "inner SGD steps during meta-training", aliases=("--inner-steps",))
    test_steps: int | None = setting(None, "inner steps at test/serving time (default: --train-steps)")
    inner_lrs: tuple[float, ...] = setting((0.4,), "inner learning rate, or one per step: 0.4,0.2",
                                           aliases=("--inner-lr",), parse=LEARNING_RATES)
    meta_lr: float | None = setting(None, "Adam lr (MAML/FOMAML, default 1e-3) or Reptile ε (default 1.0)")
    meta_batch: int = setting(32, "tasks per outer update")
    iterations: int = setting(1000, "outer updates")
    val_every: int = setting(100, "iterations between validations")
    val_episodes: int = setting(100, "validation episodes (always the same ones)")
    checkpoint_every: int = setting(50, "iterations between checkpoints")
    seed: int = setting(0, "seed of the initialization and of the task sampler")
    device: str | None = setting(None, "cpu, cuda, cuda:1 ... (default: cuda when present)")
    vectorize: bool | None = setting(None, "adapt a meta-batch's tasks in one vmap pass (default: where measured "
                                           "faster, see vmap_is_faster)", flag="--vmap")
    # MAML++ (Antoniou et al. 2019), each off by default; see networks/base.py and meta_learning.Annealing
    learned_lrs: bool = setting(False, "learn an inner lr per layer and step (LSLR)", group=MAML_PLUS_PLUS)
    per_step_norm: bool = setting(False, "BatchNorm weights and biases per inner step", group=MAML_PLUS_PLUS)
    multi_step_loss: int = setting(0, "query loss after every inner step, annealed to the last step's over "
                                      "ITERATIONS", metavar="ITERATIONS", group=MAML_PLUS_PLUS)
    first_order_iterations: int = setting(0, "maml: first order for the first ITERATIONS, then second order",
                                          metavar="ITERATIONS", group=MAML_PLUS_PLUS)
    cosine_meta_lr: bool = setting(False, "cosine-anneal the meta lr to 1% of --meta-lr", group=MAML_PLUS_PLUS)
    run_dir: Path | None = setting(None, "checkpoint/log/plot folder (default: OUT.run)")
    resume: bool = setting(False, "continue from the run folder's checkpoint")
    command: str = ""

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        for name in ("meta_batch", "iterations", "val_every", "val_episodes", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1")
        if self.train_steps < 1:
            raise ValueError("train-steps must be at least 1")
        if self.multi_step_loss < 0 or self.first_order_iterations < 0:
            raise ValueError("multi-step-loss and first-order-iterations must be >= 0")
        if self.data.dataset in TEXT_DATASETS and not self.freeze_body:
            raise ValueError(f"{self.data.dataset} is text: meta-learn with --init FILE (from `fewshot-serve "
                             "import-text-encoder`) and --freeze-body, on the encoder's cached output")
        if self.freeze_body and (self.init is None or self.adapt_from == 0):
            raise ValueError("--freeze-body needs --init and --adapt-from > 0 (the frozen part must exist)")
        if self.meta_learn_from is not None:
            if not self.freeze_body or self.data.dataset not in TEXT_DATASETS:
                raise ValueError("--meta-learn-from is for a text encoder meta-learned with --freeze-body")
            if not 1 <= self.meta_learn_from < self.adapt_from:
                raise ValueError(f"--meta-learn-from must be in [1, --adapt-from) = [1, {self.adapt_from}), got "
                                 f"{self.meta_learn_from} (from --adapt-from on, the outer loop trains already)")
            if self.centre_features:
                raise ValueError("--centre-features measures the centre on the frozen part's cached output: not "
                                 "with --meta-learn-from, which trains part of it")
        if self.centre_features and self.init is None:
            raise ValueError("--centre-features needs --init with a pretrained ResNet-12 (`fewshot-serve pretrain`)")
        if self.prototype_head and self.init is None:
            raise ValueError("--prototype-head needs --init with a ResNet-12 (e.g. from `fewshot-serve pretrain`)")
        if self.prototype_head and self.algorithm == "reptile":
            # Reptile moves the start toward the adapted weights, which would drag the shared row to the
            # support means' average; Proto-MAML's rows are rebuilt from every task's support instead
            raise ValueError("--prototype-head works with maml and fomaml, not reptile")
        if self.algorithm == "reptile" and self.uses_maml_plus_plus:
            raise ValueError(REPTILE_REFUSES_MAML_PLUS_PLUS)
        if self.meta_lr is None:
            self.meta_lr = 1.0 if self.algorithm == "reptile" else 1e-3
        if self.test_steps is None:
            self.test_steps = self.train_steps
        self.out = Path(self.out)
        self.run_dir = Path(self.run_dir) if self.run_dir else self.out.with_suffix(".run")

    @property
    def uses_maml_plus_plus(self) -> bool:
        return bool(self.learned_lrs or self.per_step_norm or self.multi_step_loss or self.first_order_iterations
                    or self.cosine_meta_lr)

    @property
    def annealing(self) -> Annealing:
        return Annealing(self.multi_step_loss, self.first_order_iterations, self.cosine_meta_lr)


@dataclass
class TrainResult:
    model_path: Path | None  # None on torchrun ranks other than 0, which write nothing
    best_score: float | None
    best_iteration: int
    seconds: float


def _init_preprocessing(config: TrainConfig, network: MetaNetwork, recipe: Recipe) -> Preprocessing | TextPreprocessing:
    """The ``--init`` file's preprocessing, after checking it was made on this run's training classes.

    An imported backbone (``fewshot-serve import-backbone``) was trained on ImageNet's classes, which
    no split here holds out: any dataset may meta-learn on it (model cards say which test photos
    ImageNet itself contains, as Tiny ImageNet's do)."""
    wanted = "text" if config.data.dataset in TEXT_DATASETS else "image"
    if recipe.input_kind != wanted:
        raise ValueError(f"{config.init} is a{'n' * (recipe.input_kind == 'image')} {recipe.input_kind} model; "
                         f"{config.data.dataset} needs a{'n' * (wanted == 'image')} {wanted} model")
    if recipe.algorithm != "import" and (recipe.dataset, recipe.split_seed) != (config.data.dataset,
                                                                                config.data.split_seed):
        raise ValueError(
            f"{config.init} was made on {recipe.dataset} with split seed {recipe.split_seed}; this run uses "
            f"{config.data.dataset} with split seed {config.data.split_seed}, whose test classes it may have seen"
        )
    if config.architecture not in (None, network.config()["architecture"]) or config.widths:
        raise ValueError(f"--init takes the architecture and widths from {config.init}; drop --architecture/--widths")
    if SEEN_VALIDATION in recipe.class_counts:
        warnings.warn(f"{config.init} was trained on the validation classes too: validation here measures "
                      "classes it has seen, so fix the iterations in advance rather than pick them by it",
                      stacklevel=3)
    return recipe.input_preprocessing()


def _network_from(
    initial: MetaNetwork, adapt_from: int, lr_steps: int, norm_states: int, inner_lrs: Sequence[float],
    centre_features: bool = False,
    prototype_head: bool = False,
) -> MetaNetwork:
    """A copy of ``initial`` (weights included) with this run's inner-loop scope and MAML++ options.

    A meta-learned file continues as it was learned: where it has this run's per-step norms and
    learned learning rates for the same steps and adapted layers (a MAML++ model fine-tuned on 20-way
    tasks, say), they are kept. Otherwise (more layers adapted, say) the learned rates start at
    ``inner_lrs``; per-step norms cannot be invented from one norm, so they must match. A centred file
    stays centred; ``centre_features`` makes the copy centred, its centre still to be measured
    (:mod:`.feature_centre`). A Proto-MAML file stays one; ``prototype_head`` makes the copy one.
    """
    settings = initial.config()
    has = settings.get("norm_states", 0)
    if norm_states != has:
        wanted = f"{norm_states - 1} inner steps with per-step norms" if norm_states else "no per-step norms"
        raise ValueError(f"this run has {wanted}; the --init file has "
                         + (f"per-step norms for {has - 1} inner steps" if has else "one shared norm"))
    if "adapt_from" in settings:
        settings["adapt_from"] = adapt_from
    elif settings.get("architecture") == "ensemble" and adapt_from != 4:
        raise ValueError("an ensemble adapts its head only: use --adapt-from 4")
    if centre_features:
        if not isinstance(initial, PooledFeatureClassifier) or initial.norm != "fixed":
            raise ValueError("--centre-features needs a pretrained ResNet-12 (fixed norm, from `fewshot-serve "
                             "pretrain`) or an imported backbone as --init")
        settings["centred"] = True
    if prototype_head:
        if settings.get("architecture") not in ("resnet12", "efficientnet_lite", "ensemble", "bert"):
            raise ValueError("--prototype-head needs a ResNet-12, an EfficientNet-Lite, an ensemble or a text "
                             "encoder as --init")
        settings["prototype_head"] = True
    network = build_network({**settings, "lr_steps": lr_steps})
    initial_weights = initial.state_dict()
    inherits_lrs = lr_steps > 0 and getattr(initial_weights.get("step_lrs"), "shape", None) == network.step_lrs.shape
    weights = {k: v for k, v in initial_weights.items() if inherits_lrs or k != "step_lrs"}
    outcome = network.load_state_dict(weights, strict=False)
    if outcome.unexpected_keys or set(outcome.missing_keys) - {"step_lrs", "feature_centre"}:
        raise ValueError(f"the --init weights do not fit the network: {outcome}")
    if not inherits_lrs:
        network.reset_step_lrs(inner_lrs)
    return network


def _command_with_provenance(command: str, init: Recipe | None) -> str:
    """This run's command, after the import's where the ``--init`` file was imported: the model file then
    still says which package, version and weights file (sha256) its backbone came from."""
    return "; ".join(filter(None, (init.command if init is not None and init.algorithm == "import" else "", command)))


def _class_counts(splits: dict[str, Any], init: Recipe | None) -> dict[str, int]:
    """The recipe's record of the classes behind the weights: a backbone trained on the validation classes
    too passes that on, since the validation classes are then no longer unseen."""
    if init is not None and SEEN_VALIDATION in init.class_counts:
        return dict(init.class_counts)
    return {k: len(v) for k, v in splits.items() if v is not None}


def higher_is_better(task_kind: str) -> bool:
    return task_kind == "classification"


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Meta-train as ``config`` says and export the best-validating initialization."""
    started = time.perf_counter()
    device = pick_device(config.device)
    shard, joined = join_from_environment(cuda=device.type == "cuda")
    finished = False
    try:
        shard.check_share(config.meta_batch)  # before loading any data
        if device.type == "cuda" and shard.world > 1:
            device = torch.device("cuda", shard.local_rank)
        result = _train(config, progress and shard.is_main, device, shard, started)
        finished = True
        return result
    finally:
        if joined:
            leave_process_group(finished)


def _train(config: TrainConfig, progress: bool, device: torch.device, shard: Shard, started: float) -> TrainResult:
    spec = config.data
    initial = None if config.init is None else load_model(config.init)
    preprocessing = standard_preprocessing(spec) if initial is None else _init_preprocessing(config, *initial)
    splits: dict[str, Any] = {"train": None, "val": None, "test": None}
    if preprocessing is not None:
        splits = load_splits(spec, preprocessing)
        if initial is None:
            preprocessing = measured_preprocessing(preprocessing, splits["train"])
    sample = lambda split, augment: task_sampler(  # noqa: E731
        spec, splits[split], preprocessing, config.ways, config.shots, config.queries, augment
    )
    train_tasks, val_tasks = sample("train", True), sample("val", False)

    torch.manual_seed(config.seed)
    norm_states = config.train_steps + 1 if config.per_step_norm else 0
    lr_steps = config.train_steps if config.learned_lrs else 0
    if initial is None:
        network = standard_network(spec, preprocessing, norm_states, lr_steps, config.architecture, config.widths,
                                   config.adapt_from)
        network.reset_step_lrs(config.inner_lrs)
    else:
        network = _network_from(initial[0], config.adapt_from, lr_steps, norm_states, config.inner_lrs,
                                config.centre_features, config.prototype_head)
    network.to(device)
    learned, cached = network, {}  # learned: what the outer loop updates and validation adapts
    if config.freeze_body:
        learned = AdaptedPart(network, config.meta_learn_from)
        cached = {split: cache_frozen_part(network, splits[split], preprocessing, device, part=learned)
                  for split in ("train", "val")}
        train_tasks, val_tasks = (CachedEpisodes(sample(split, False), cached[split], learned.caches_tokens)
                                  for split in ("train", "val"))
    if config.centre_features:
        centre_on_training_classes(network, splits["train"], preprocessing, device, cached.get("train"))
    inner = InnerLoop(config.inner_lrs, config.train_steps, config.test_steps)
    vectorize = vmap_is_faster(network, device) if config.vectorize is None else config.vectorize
    learner = MetaLearner(learned, config.algorithm, inner, config.meta_lr, config.iterations, vectorize,
                          config.annealing)
    generator = torch.Generator().manual_seed(config.seed)
    higher = higher_is_better(network.task_kind)
    run = RunFolder(config.run_dir, "accuracy" if higher else "mse", create=shard.is_main)
    state = TrainingState(0, {}, {k: v.detach().clone() for k, v in learner.meta_params.items()}, None, 0,
                          None, generator.get_state(), fingerprint(config))
    resumed = run.resume(config) if config.resume else None
    if resumed is not None:
        state = _restore(resumed, learner, generator)

    recipe = Recipe(
        network=network.config(),
        preprocessing=None if preprocessing is None else preprocessing.to_dict(),
        inner_lrs=list(config.inner_lrs),
        train_steps=config.train_steps,
        test_steps=config.test_steps,
        algorithm=config.algorithm,
        dataset=spec.dataset,
        ways=config.ways,
        shots=config.shots,
        queries=config.queries,
        class_counts=_class_counts(splits, None if initial is None else initial[1]),
        split_seed=spec.split_seed,
        command=_command_with_provenance(config.command, None if initial is None else initial[1]),
    )

    def checkpoint(iteration: int) -> None:
        if not shard.is_main:
            return
        state.iteration = iteration
        state.weights = {k: v.detach().clone() for k, v in learner.meta_params.items()}
        state.optimizer = None if learner.optimizer is None else learner.optimizer.state_dict()
        state.rng_state = generator.get_state()
        # a backbone trained on the validation classes makes their score no held-out figure: none is recorded
        seen = SEEN_VALIDATION in recipe.class_counts
        recipe.val_metric = {} if state.best_score is None or seen else {run.metric: state.best_score}
        run.save(state, config.out, network, recipe, {**network.state_dict(), **state.best_params})

    bar = tqdm(total=config.iterations, initial=state.iteration, desc=f"{config.algorithm}", disable=not progress)
    for iteration in range(state.iteration, config.iterations):
        tic = time.perf_counter()
        batch = train_tasks.sample(generator, config.meta_batch, device)
        loss, metric = sharded_step(learner, batch, iteration, shard)
        if not math.isfinite(loss):
            raise run.diverged(f"meta-training diverged at iteration {iteration + 1}", loss,
                               "lower --inner-lr or --meta-lr")
        rate = config.meta_batch / (time.perf_counter() - tic)
        done = iteration + 1
        run.log.append({"iteration": done, "loss": loss, "metric": metric, "tasks_per_s": rate})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", **{"acc" if higher else "mse": f"{metric:.3f}"}, tasks_s=f"{rate:.0f}")
        if shard.is_main and (done % config.val_every == 0 or done == config.iterations):
            result = evaluate_episodes(
                learned, val_tasks, config.inner_lrs, config.test_steps, config.val_episodes, VALIDATION_SEED, device
            )
            run.log.append({"iteration": done, "val_metric": result.mean, "val_ci95": result.ci95})
            params = {k: v.detach().clone() for k, v in learner.meta_params.items()}
            improved = keep_if_best(state, result.mean, done, params, higher)
            bar.write(f"iteration {done}: validation {result.mean:.4f} ± {result.ci95:.4f}"
                      + (" (best)" if improved else ""))
        if done % config.checkpoint_every == 0 or done == config.iterations:
            checkpoint(done)
    bar.close()
    if state.iteration < config.iterations:  # nothing ran (resumed a finished run): still export
        checkpoint(config.iterations)
    model_path = config.out if shard.is_main else None
    return TrainResult(model_path, state.best_score, state.best_iteration, time.perf_counter() - started)


def _restore(state: TrainingState, learner: MetaLearner, generator: torch.Generator) -> TrainingState:
    """Put a resumed checkpoint's weights, optimizer and sampler state back into the run."""
    with torch.no_grad():
        for key, value in state.weights.items():
            learner.meta_params[key].copy_(value)
    if learner.optimizer is not None and state.optimizer is not None:
        learner.optimizer.load_state_dict(state.optimizer)
    generator.set_state(state.rng_state)
    device = next(iter(learner.meta_params.values())).device
    state.best_params = {k: v.to(device) for k, v in state.best_params.items()}
    return state
