"""The networks that get meta-learned, one module each; :func:`build_network` rebuilds any from its config.

* :class:`Conv4` (``conv4.py``): the standard 4-block few-shot convnet, for characters.
* :class:`ResNet12` (``resnet12.py``): the residual backbone for photos, trained here.
* :class:`EfficientNetLite` (``efficientnet_lite.py``): the ImageNet-trained photo backbone, imported.
* :class:`BertEncoder` (``bert.py``): the pretrained sentence encoder for texts, imported.
* :class:`FeatureEnsemble` (``ensemble.py``): pretrained ResNet-12s side by side under one head.
* :class:`SinusoidMLP` (``mlp.py``): the MAML paper's regression network.

What they share (params-dict forward, fast weights, the shared head row, MAML++'s learned
learning rates) is in ``base.py``; their support-set BatchNorm and its kernels in ``norms.py``.
"""

from __future__ import annotations

from typing import Any

from .base import HEAD_KEYS, MetaNetwork, PooledFeatureClassifier, SharedHeadClassifier, step_lr
from .bert import BertEncoder
from .conv4 import Conv4
from .efficientnet_lite import EfficientNetLite
from .ensemble import FeatureEnsemble
from .mlp import SinusoidMLP
from .norms import BN_EPS, first_order_kernels, support_norm
from .resnet12 import ResNet12, fixed_norm_params

ARCHITECTURES = {"conv4": Conv4, "resnet12": ResNet12, "efficientnet_lite": EfficientNetLite,
                 "ensemble": FeatureEnsemble, "mlp": SinusoidMLP, "bert": BertEncoder}

__all__ = ["BN_EPS", "HEAD_KEYS", "MetaNetwork", "SharedHeadClassifier", "PooledFeatureClassifier", "Conv4", "ResNet12",
           "EfficientNetLite", "BertEncoder", "FeatureEnsemble",
           "SinusoidMLP", "ARCHITECTURES",
           "build_network", "config_problems", "fixed_norm_params", "first_order_kernels", "step_lr", "support_norm"]


def config_problems(config: Any) -> list[str]:
    """What is wrong with a stored network config (a model file's: untrusted), by its architecture's own rules."""
    architecture = config.get("architecture") if isinstance(config, dict) else None
    if architecture not in ARCHITECTURES:
        return [f"unknown architecture {architecture!r}"]
    return ARCHITECTURES[architecture].config_problems(config)


def build_network(config: dict[str, Any]) -> MetaNetwork:
    """Rebuild a network from :meth:`MetaNetwork.config` (as stored in a model file)."""
    config = dict(config)
    architecture = config.pop("architecture", None)
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r} (known: {', '.join(map(repr, ARCHITECTURES))})")
    return ARCHITECTURES[architecture](**config)
