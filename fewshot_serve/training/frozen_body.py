"""Meta-learning the adapted part of a pretrained network only, over its frozen part's cached output.

With ``adapt_from > 0`` the inner loop never changes the layers before the first fast weight. If
the outer loop leaves them alone too (``train --init FILE --freeze-body``), their output for each
image is a constant: it is computed once per image of the dataset, and meta-training runs the
inner loop and the meta-gradient on those cached outputs only. For the photo model (ResNet-12,
head-only inner loop) that makes a task cost a few small matrix products instead of a forward and
backward pass through the whole backbone. The price: no photo augmentation of the training
classes, since the cache holds each image once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..data.datasets import ImageClasses
from ..data.episodes import ImageEpisodes, TaskBatch
from ..data.text_datasets import TextClasses
from ..networks import MetaNetwork
from ..preprocessing import Preprocessing
from ..text_preprocessing import TextPreprocessing, in_length_batches


class AdaptedPart:
    """``network`` from its frozen part's output on: the meta-parameters are those outside the frozen part.

    A view, not a copy: it shares ``network``'s parameter tensors (updating one updates the other)
    and answers everything but the four methods below from ``network`` itself, so what is
    meta-learned here is exactly what the whole network serves. Its input is the frozen part's
    output, so its own frozen part is the identity and its forward is ``network.adapted_part``.
    """

    def __init__(self, network: MetaNetwork) -> None:
        self.whole = network
        self._names = [name for name, _ in network.named_parameters() if not network.in_frozen_part(name)]

    def __getattr__(self, name: str) -> Any:  # only called for what this class does not define
        return getattr(self.whole, name)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        whole = dict(self.whole.named_parameters())
        return ((name, whole[name]) for name in self._names)

    def parameters(self) -> Iterator[nn.Parameter]:
        return (param for _, param in self.named_parameters())

    def frozen_part(self, params: dict[str, Tensor], h: Tensor, n_ref: int | None = None) -> Tensor:
        return h

    def apply_params(self, params: dict[str, Tensor], h: Tensor, n_ref: int | None = None) -> Tensor:
        return self.whole.adapted_part(params, h, n_ref)

    adapted_part = apply_params

    def in_frozen_part(self, name: str) -> bool:
        return False


@torch.no_grad()
def per_image(compute: Callable[[Tensor], Tensor], network: MetaNetwork, images: Tensor, normalize,
              device: torch.device, description: str, batch_size: int | None = None) -> Tensor:
    """``compute`` over uint8 ``images``, normalized, in batches, with a progress bar.

    Only a fixed-norm network (from ``fewshot-serve pretrain``) computes each image on its own, so
    that batching cannot change the result; others are refused. The default batch holds about as
    many pixels as 500 images of 32x32 (10 of 224x224): at 500 of 224x224 one activation alone
    took 2.4 GB and the backbone ran several times slower per image.
    """
    if getattr(network, "norm", "fixed") != "fixed":
        raise ValueError(f"{description} needs a fixed-norm network (from `fewshot-serve pretrain`), which "
                         "computes each image on its own")
    batch_size = batch_size or max(1, 500 * 32 * 32 // (images.shape[-1] * images.shape[-2]))
    parts = []
    for start in tqdm(range(0, len(images), batch_size), desc=description, leave=False):
        parts.append(compute(normalize(images[start : start + batch_size].to(device))))
    return torch.cat(parts)


def cache_frozen_part(network: MetaNetwork, classes: ImageClasses | TextClasses,
                      preprocessing: Preprocessing | TextPreprocessing, device: torch.device,
                      bf16: bool = False) -> Tensor:
    """The frozen part's output for every image (or text) of ``classes`` (what ``--freeze-body``
    meta-learns on); ``bf16``: computed under bfloat16 autocast, as ``load(..., bf16=True)`` serves
    it, kept in float32."""
    params = network.at_step(dict(network.named_parameters()), 0)
    if isinstance(classes, TextClasses):
        return per_text(lambda ids: network.frozen_part(params, ids.to(device)).float().cpu(), network, classes.texts,
                        preprocessing, "caching the frozen part")

    def frozen_part(x: Tensor) -> Tensor:
        if not bf16:
            return network.frozen_part(params, x)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return network.frozen_part(params, x).float()

    return per_image(frozen_part, network, classes.images, preprocessing.normalize, device, "caching the frozen part")


@torch.no_grad()
def per_text(compute: Callable[[Tensor], Tensor], network: MetaNetwork, texts: list[str],
             preprocessing: TextPreprocessing, description: str, batch_size: int = 64) -> Tensor:
    """``compute`` over the token ids of ``texts``, in batches of similar length (padding costs
    attention on every layer), with a progress bar; rows in the order of ``texts``, per-token outputs
    padded to one length (:meth:`~fewshot_serve.networks.MetaNetwork.join_frozen`)."""
    return in_length_batches(compute, preprocessing.token_ids(texts), network.join_frozen, batch_size, description)


class CachedEpisodes:
    """``sampler``'s episodes with each image replaced by its cached frozen-part output."""

    def __init__(self, sampler: ImageEpisodes, table: Tensor) -> None:
        if sampler.rotations != 1:
            raise ValueError("cached episodes cannot rotate images")
        self.sampler, self.table, self.ways = sampler, table, sampler.ways

    def sample(self, generator: torch.Generator, tasks: int, device: torch.device | str) -> TaskBatch:
        shots, ways = self.sampler.shots, self.ways
        support, query = [], []
        for _ in range(tasks):
            picks = torch.stack([indices for indices, _ in self.sampler.sample_indices(generator)])
            support.append(self.table[picks[:, :shots].reshape(-1)])
            query.append(self.table[picks[:, shots:].reshape(-1)])
        labels = torch.arange(ways)
        ys = labels.repeat_interleave(shots).expand(tasks, -1)
        yq = labels.repeat_interleave(self.sampler.queries).expand(tasks, -1)
        return TaskBatch(torch.stack(support).to(device), ys.to(device), torch.stack(query).to(device), yq.to(device),
                         ways)
