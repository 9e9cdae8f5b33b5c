"""The training classes' mean feature, which a centred ResNet-12 subtracts before normalizing.

Measured once, with the backbone that will be served, over every training image without
augmentation (``train --init FILE --centre-features``), and stored in the model file: serving and
the ONNX export then subtract the very same constant, and classes never seen in training, which
have no mean of their own to offer, are centred the way the training classes were.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.datasets import ImageClasses
from ..data.text_datasets import TextClasses
from ..networks import MetaNetwork, PooledFeatureClassifier
from ..preprocessing import Preprocessing
from .frozen_body import per_image


def centre_on_training_classes(network: MetaNetwork, classes: ImageClasses | TextClasses, preprocessing: Preprocessing,
                               device: torch.device, frozen_outputs: Tensor | None = None) -> None:
    """Set ``network``'s feature centre to the mean pooled feature of ``classes``' images.

    ``frozen_outputs``, the frozen part's output for those images where meta-learning has already
    cached it (``--freeze-body``), saves a second pass through the backbone: only the blocks after
    it run (none, for a head-only inner loop).
    """
    if not isinstance(network, PooledFeatureClassifier) or not network.centred:
        raise ValueError("feature centring needs a ResNet-12 or EfficientNet-Lite built with centred=True")
    params = network.at_step(dict(network.named_parameters()), 0)
    if frozen_outputs is None and isinstance(classes, TextClasses):
        raise ValueError("a text encoder's feature centre is measured on its cached frozen part (--freeze-body)")
    if frozen_outputs is None:
        sums = per_image(lambda x: network.embed(params, x).double().sum(0, True), network, classes.images,
                         preprocessing.normalize, device, "feature centre")
    else:
        with torch.no_grad():
            sums = torch.stack([network.pooled_features(params, chunk.to(device)).double().sum(0)
                                for chunk in frozen_outputs.split(500)])
    network.set_feature_centre((sums.sum(0) / int(classes.counts().sum())).to(network.feature_centre.dtype))
