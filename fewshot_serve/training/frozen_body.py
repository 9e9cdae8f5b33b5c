"""Meta-learning the adapted part of a pretrained network only, over its frozen part's cached output.

With ``adapt_from > 0`` the inner loop never changes the layers before the first fast weight. If
the outer loop leaves them alone too (``train --init FILE --freeze-body``), their output for each
image is a constant: it is computed once per image of the dataset, and meta-training runs the
inner loop and the meta-gradient on those cached outputs only. For the photo model (ResNet-12,
head-only inner loop) that makes a task cost a few small matrix products instead of a forward and
backward pass through the whole backbone. The price: no photo augmentation of the training
classes, since the cache holds each image once.

A text encoder can also meta-learn layers the inner loop does not adapt (``--meta-learn-from
UNIT``): only the units before UNIT are cached, and the outer loop trains the units from UNIT up to
the first adapted one as well. The inner loop still runs them once per task (they are not fast
weights), so serving is unchanged; what grows is what meta-training may change.
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
    and answers everything but the methods below from ``network`` itself, so what is
    meta-learned here is exactly what the whole network serves. Its input is the frozen part's
    output, so its own frozen part is the identity (or, with ``meta_learned_from``, the frozen units
    from there on) and its forward is ``network.adapted_part`` after it.
    """

    def __init__(self, network: MetaNetwork, meta_learned_from: int | None = None) -> None:
        """``meta_learned_from``: the first unit the outer loop trains (a text encoder's, before its
        ``adapt_from``); None: the first adapted one, so everything before it is cached."""
        if meta_learned_from is not None and not hasattr(network, "frozen_part_from"):
            raise ValueError(f"meta-learning units the inner loop does not adapt over a cache: a text encoder's "
                             f"only, not {type(network).__name__}'s")
        self.whole, self.meta_learned_from = network, meta_learned_from

        def cached(name: str) -> bool:
            return network.in_frozen_part(name) and (meta_learned_from is None
                                                     or network.unit_of(name) < meta_learned_from)

        self._names = [name for name, _ in network.named_parameters() if not cached(name)]

    @property
    def caches_tokens(self) -> bool:
        """Whether :meth:`cached_input` is per token (texts; the mask as the last channel), which
        :class:`CachedEpisodes` then cuts to each batch's longest text."""
        whole = self.whole
        per_token_frozen_part = whole.input_kind == "text" and whole.adapt_from < whole.head_only_adapt_from
        return self.meta_learned_from is not None or per_token_frozen_part

    def __getattr__(self, name: str) -> Any:  # only called for what this class does not define
        return getattr(self.whole, name)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        whole = dict(self.whole.named_parameters())
        return ((name, whole[name]) for name in self._names)

    def parameters(self) -> Iterator[nn.Parameter]:
        return (param for _, param in self.named_parameters())

    def frozen_part(self, params: dict[str, Tensor], h: Tensor, n_ref: int | None = None) -> Tensor:
        if self.meta_learned_from is None:
            return h
        return self.whole.frozen_part_from(params, h, self.meta_learned_from)

    def cached_input(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """What the cache holds for input ``x``: the whole network's output before the first meta-learned unit."""
        if self.meta_learned_from is None:
            return self.whole.frozen_part(params, x)
        return self.whole.units_before(params, x, self.meta_learned_from)

    def apply_params(self, params: dict[str, Tensor], h: Tensor, n_ref: int | None = None) -> Tensor:
        return self.whole.adapted_part(params, self.frozen_part(params, h), n_ref)

    def adapted_part(self, params: dict[str, Tensor], h: Tensor, n_ref: int | None = None) -> Tensor:
        return self.whole.adapted_part(params, h, n_ref)

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
                      bf16: bool = False, part: AdaptedPart | None = None) -> Tensor:
    """The frozen part's output for every image (or text) of ``classes`` (what ``--freeze-body``
    meta-learns on); ``bf16``: computed under bfloat16 autocast, as ``load(..., bf16=True)`` serves
    it, kept in float32; ``part``: the meta-learned part, whose :meth:`~AdaptedPart.cached_input` is
    cached instead (texts only)."""
    params = network.at_step(dict(network.named_parameters()), 0)
    if isinstance(classes, TextClasses):
        cached = network.frozen_part if part is None else part.cached_input
        return per_text(lambda ids: cached(params, ids.to(device)).float().cpu(), network, classes.texts,
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

    def __init__(self, sampler: ImageEpisodes, table: Tensor, per_token: bool = False) -> None:
        """``per_token``: ``table`` holds texts' per-token outputs, the attention mask as the last channel."""
        if sampler.rotations != 1:
            raise ValueError("cached episodes cannot rotate images")
        self.sampler, self.table, self.ways, self.per_token = sampler, table, sampler.ways, per_token

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
        xs, xq = torch.stack(support), torch.stack(query)
        if self.per_token:
            xs, xq = _without_padding(xs, xq)
        return TaskBatch(xs.to(device), ys.to(device), xq.to(device), yq.to(device), ways)


def _without_padding(support: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token text outputs (the mask as the last channel) cut to the batch's longest text: the cache
    pads every text to the longest of the dataset, and each layer would attend over that padding."""
    length = int(torch.cat([support[..., -1].sum(-1).flatten(), query[..., -1].sum(-1).flatten()]).max())
    return support[:, :, :length], query[:, :, :length]
