"""One model file from several pretrained backbones (ResNet-12s from ``pretrain``, EfficientNet-Lites from
``import-backbone``, or both): ``fewshot-serve ensemble A B --out E``.

The file it writes holds a :class:`~fewshot_serve.networks.FeatureEnsemble` with the members'
weights and a zero head; like a pretrained file, it is the ``--init`` of the meta-learning that
gives it its head (``train --init E --adapt-from 4 --freeze-body --prototype-head ...``). The
members must have been made on the same data (dataset, split seed, classes seen) with the same
preprocessing: otherwise one of them may have seen what the others hold out as test classes, or
the served images would not be what some member was trained on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

from ..files.model_file import Recipe, load_model, save_model
from ..networks import FeatureEnsemble, PooledFeatureClassifier
from ..networks.ensemble import member_config


def ensemble_models(paths: Sequence[str | os.PathLike], out: str | os.PathLike, command: str = "") -> Recipe:
    """Write the ensemble of the pretrained backbone files ``paths`` to ``out``; returns its recipe.

    Imported backbones (trained on ImageNet, not on a split of ours) join whatever data the others
    were made on; the ensemble's recipe is that of the first file made here, or of the first file."""
    if len(paths) < 2:
        raise ValueError(f"an ensemble needs at least 2 model files, got {len(paths)}")
    loaded = [load_model(path) for path in paths]
    made_here = [(path, recipe) for path, (_, recipe) in zip(paths, loaded) if recipe.algorithm != "import"]
    first_path, first = (made_here or [(paths[0], loaded[0][1])])[0]
    for path, (network, recipe) in zip(paths, loaded):
        if not isinstance(network, PooledFeatureClassifier) or network.norm != "fixed":
            raise ValueError(f"{path}: ensemble members must be pretrained backbones (`fewshot-serve pretrain` or "
                             "`fewshot-serve import-backbone`)")
        imported = recipe.algorithm == "import"
        for field in ("preprocessing",) if imported else ("dataset", "split_seed", "class_counts", "preprocessing"):
            if getattr(recipe, field) != getattr(first, field):
                raise ValueError(f"{path} differs from {first_path} in its {field} ({getattr(recipe, field)!r} vs "
                                 f"{getattr(first, field)!r}); ensemble members must be made on the same data")
    members = [{**member_config(network), "adapt_from": network.head_only_adapt_from} for network, _ in loaded]
    ensemble = FeatureEnsemble(members)
    for member, (network, _) in zip(ensemble.members, loaded):
        backbone = member.state_dict().keys()  # a member's file may also hold a head and learned rates: not taken
        member.load_state_dict({k: v for k, v in network.state_dict().items() if k in backbone})
    made = "; ".join(filter(None, [recipe.command for _, recipe in loaded] + [command]))
    recipe = replace(first, network=ensemble.config(), val_metric={}, command=made)
    save_model(out, ensemble, recipe)
    return recipe
