"""The photo model's ablation: every contestant scored on the same held-out Tiny ImageNet episodes.

    python models/compare_photos.py --model "pretrained + MAML=models/photos-resnet12.safetensors" \
        --model "Conv4, MAML from scratch=runs/photos-conv4-scratch.safetensors" ... \
        --nearest-mean "pretrained only, nearest class mean=runs/photos-pretrained.safetensors"

``--model NAME=FILE`` adapts FILE with its own inner loop (test-time steps and learning rates), or
with a fixed learning rate and step count given as ``NAME=FILE@LR,STEPS`` (a pretrained file's
head fine-tuned without meta-learning, at the values chosen on validation classes);
``--bf16-model NAME=FILE`` is ``--model`` with the backbone under bfloat16 autocast (as ``load(...,
bf16=True)`` serves it; the inner loop in float32), for files whose inner loop adapts the head only:
``--paired`` after the same file's ``--model`` gives what bfloat16 costs, episode by episode.
``--nearest-mean NAME=FILE`` classifies by the nearest class mean of FILE's features as its head
sees them (unit length, centred where FILE is), no inner loop (a fixed-norm ResNet-12 adapting its
head only).
Each is scored on 5-way 1-shot and 5-way 5-shot episodes of the test classes (``--settings``; 600
episodes, 15 queries per class, mean ± 95% CI); all contestants see the very same episodes (seed 0).
Nothing here is photo-specific: the handwriting backbone's ablation uses it with ``--settings 5x1
5x5 20x1 20x5`` (then on the episodes of ``compare_omniglot.py``, which draws them the same way). Results
merge into ``photos-comparison.json`` beside this script, so contestants may be scored in
separate runs; the test classes' names are recorded with them. ``--split val --output FILE``
scores the validation classes instead, to choose between candidates without touching the test
classes. ``--dataset folder --data-root DIR --split all`` scores every class of a class-per-folder
tree instead of a split of the models' own dataset: the cross-domain validation sets
(``cross-domain/cub50``, ``cross-domain/dtd10``) on which the ImageNet-pretrained photo models are
chosen, and on which models of different datasets (an imported backbone, the heads meta-learned on
it) meet on the same episodes. ``--paired`` adds each later contestant's paired difference from the first, episode by
episode (:func:`~fewshot_serve.training.evaluation.paired_difference`): far narrower than the two intervals,
it tells a change of a few hundredths of a point from noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fewshot_serve.data.datasets import load_folder_tree
from fewshot_serve.data.episodes import ImageEpisodes
from fewshot_serve.data.sources import DataSpec, load_splits
from fewshot_serve.files.atomic import atomic_write_json
from fewshot_serve.files.model_file import load_model
from fewshot_serve.training.evaluation import evaluate_episodes, paired_difference
from fewshot_serve.training.frozen_body import AdaptedPart, CachedEpisodes, cache_frozen_part
from fewshot_serve.training.nearest_mean import nearest_mean_accuracy

HERE = Path(__file__).resolve().parent


def named(text: str) -> tuple[str, Path, tuple[float, int] | None]:
    name, separator, path = text.partition("=")
    if not separator:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE or NAME=FILE@LR,STEPS, got {text!r}")
    path, _, override = path.partition("@")
    if not override:
        return name, Path(path), None
    lr, _, steps = override.partition(",")
    return name, Path(path), (float(lr), int(steps))


def frozen_outputs(network, classes, preprocessing, device, cache: list, bf16: bool = False) -> torch.Tensor | None:
    """The frozen part's output for every image of ``classes``, for a fixed-norm network whose inner loop leaves
    some layers alone (None otherwise); shared by files whose frozen blocks are equal (a backbone and the
    models meta-learned from it with ``--freeze-body``) when scored on the same ``classes``."""
    if not network.has_per_image_frozen_part:
        return None
    frozen = {k: v for k, v in network.state_dict().items() if network.in_frozen_part(k)}
    for scored, precision, weights, table in cache:
        if (scored is classes and precision == bf16 and weights.keys() == frozen.keys()
                and all(torch.equal(weights[k], frozen[k]) for k in frozen)):
            return table
    table = cache_frozen_part(network, classes, preprocessing, device, bf16)
    cache.append((classes, bf16, frozen, table))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=named, action="append", default=[])
    parser.add_argument("--bf16-model", type=named, action="append", default=[])
    parser.add_argument("--nearest-mean", type=named, action="append", default=[])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--settings", nargs="+", default=["5x1", "5x5"], help="WAYSxSHOTS, e.g. 5x1 5x5 20x1")
    parser.add_argument("--dataset", default=None, help="score on this dataset (default: each model's own); with "
                        "--split all, 'folder' and --data-root")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--images-per-class", type=int, default=None, metavar="N",
                        help="decode only each class's first N images (e.g. Tiny ImageNet at 224x224 in memory)")
    parser.add_argument("--split", choices=("test", "val", "all"), default="test")
    parser.add_argument("--output", type=Path, default=None, help="default: photos-comparison.json beside this script "
                        "(test split only)")
    parser.add_argument("--paired", action="store_true", help="also each contestant's paired difference from the first")
    args = parser.parse_args()
    if args.output is None:
        if args.split != "test":
            parser.error(f"--split {args.split} needs --output: the model card's comparison file holds test "
                         "scores only")
    if args.split == "all" and (args.dataset != "folder" or args.data_root is None):
        parser.error("--split all scores a class-per-folder tree: give --dataset folder --data-root DIR")
        args.output = HERE / "photos-comparison.json"
    device = torch.device("cpu")
    scored_classes: dict[tuple, object] = {}
    cache: list[tuple[object, bool, dict, torch.Tensor]] = []
    first: dict[str, tuple[str, object]] = {}  # setting -> the first contestant's name and result
    contestants = ([("inner loop", m) for m in args.model]
                   + [("inner loop, bfloat16 backbone", m) for m in args.bf16_model]
                   + [("nearest mean", m) for m in args.nearest_mean])
    for mode, (name, path, override) in contestants:
        network, recipe = load_model(path, device)
        preprocessing = recipe.image_preprocessing()
        dataset = args.dataset or recipe.dataset
        key = (dataset, recipe.split_seed, preprocessing.image_size)
        if key not in scored_classes:  # decoding does not depend on mean/std, so models of one size share it
            spec = DataSpec(dataset, args.data_root, split_seed=recipe.split_seed,
                            images_per_class=args.images_per_class)
            scored_classes[key] = (load_folder_tree(args.data_root, preprocessing, args.images_per_class)
                                   if args.split == "all"
                                   else load_splits(spec, preprocessing)[args.split])
        classes = scored_classes[key]
        lrs, steps = (tuple(recipe.inner_lrs), recipe.test_steps) if override is None else ((override[0],), override[1])
        entry = {"file": path.name, "mode": mode, "algorithm": recipe.algorithm, "network": recipe.network,
                 "inner_lrs": lrs if not network.lr_steps else "learned", "test_steps": steps,
                 f"{args.split}_classes": classes.names}
        bf16 = mode == "inner loop, bfloat16 backbone"
        table = frozen_outputs(network, classes, preprocessing, device, cache, bf16)
        if bf16 and table is None:
            parser.error(f"--bf16-model {path}: only a fixed-norm file with a frozen part has a backbone to cache")
        for ways, shots in (map(int, setting.split("x")) for setting in args.settings):
            sampler = ImageEpisodes(classes, preprocessing, ways, shots, queries=15)
            if mode == "nearest mean":
                with torch.no_grad():  # the features as the head sees them (centred, where the file is)
                    features = network.head_input(network.at_step(dict(network.named_parameters()), 0), table)
                result = nearest_mean_accuracy(features, sampler, args.episodes, seed=0)
            elif table is not None:  # the same episodes, from the frozen part's cached output (tested equal)
                result = evaluate_episodes(AdaptedPart(network), CachedEpisodes(sampler, table), lrs, steps,
                                           args.episodes, seed=0, device=device, progress=True)
            else:
                result = evaluate_episodes(network, sampler, lrs, steps, args.episodes, seed=0, device=device,
                                           progress=True)
            setting = f"{ways}-way {shots}-shot"
            entry[setting] = {"accuracy": result.mean, "ci95": result.ci95, "episodes": result.episodes}
            print(f"{name}: {setting} {100 * result.mean:.2f} ± {100 * result.ci95:.2f}%", flush=True)
            if args.paired and setting in first:
                against, before = first[setting]
                difference = paired_difference(before, result)
                entry[setting]["paired_difference"] = {"from": against, "mean": difference.mean,
                                                       "ci95": difference.ci95}
                print(f"    paired difference from {against}: {100 * difference.mean:+.2f} ± "
                      f"{100 * difference.ci95:.2f} points", flush=True)
            first.setdefault(setting, (name, result))
        # re-read before writing: another evaluation may have added its contestant meanwhile
        results = json.loads(args.output.read_text()) if args.output.exists() else {}
        results[name] = entry
        atomic_write_json(args.output, results)


if __name__ == "__main__":
    main()
