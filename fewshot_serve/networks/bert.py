"""A BERT text encoder (Devlin et al. 2019) as a pure function of a params dict: sentences in, unit features out.

Its weights come from outside (``fewshot-serve import-text-encoder``,
:mod:`fewshot_serve.files.text_encoder_import`): sentence-transformers' all-MiniLM-L6-v2, trained on a
billion sentence pairs, separates intents no CPU here could teach a network from a few thousand.
It ends like the image backbones (:class:`~.base.PooledFeatureClassifier`): mean-pooled token
features, optional centring, unit length, the shared head row times a logit temperature, so the
inner loop, Proto-MAML, learned learning rates, int8 storage and the model-file checks work unchanged.

The input is one int64 tensor ``[n, L]`` of token ids, right-padded with id 0 (BERT's ``[PAD]``): the
attention mask is ``ids != 0``, so a batch needs nothing beside its ids. Every text gets token type 0,
so only that row of BERT's token-type table is kept (``token_type``).

``adapt_from`` counts *units*: 0 the embeddings, ``1..layers`` the transformer layers; the first
``adapt_from`` units are the :meth:`frozen_part`. ``layers + 1`` (the default) adapts the head row
alone and the frozen part ends mean-pooled, ``[n, hidden]``; ``layers`` adapts the last layer too,
and the frozen part is then per token: ``[n, L, hidden + 1]``, the attention mask as the last channel,
so that the adapted layers still know which tokens are padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from .base import PooledFeatureClassifier
from .config_checks import is_int, key_problems, step_count_problems

PAD_ID = 0
#: Sizes a stored config may ask for (a model file is untrusted: checked before allocating).
LIMITS = {"vocab_size": 250_000, "hidden": 4096, "layers": 48, "heads": 64, "intermediate": 16_384,
          "max_positions": 4096}
#: A large negative score for padded keys: exp() of it is 0 in float32 and float64 alike.
MASKED = -1e9


class TransformerLayer(nn.Module):
    """Parameters of one post-norm BERT layer; the computation is :meth:`BertEncoder._layer`."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        for name in ("query", "key", "value", "attention_out"):
            setattr(self, name, skip_init(nn.Linear, hidden, hidden))
        self.attention_norm = nn.LayerNorm(hidden)
        self.intermediate = skip_init(nn.Linear, hidden, intermediate)
        self.output = skip_init(nn.Linear, intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden)


class BertEncoder(PooledFeatureClassifier):

    norm = "fixed"  # each text is computed on its own: no batch statistics
    input_kind = "text"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden: int = 384,
        layers: int = 6,
        heads: int = 12,
        intermediate: int = 1536,
        max_positions: int = 512,
        norm_eps: float = 1e-12,
        adapt_from: int | None = None,
        lr_steps: int = 0,
        centred: bool = False,
        prototype_head: bool = False,
    ) -> None:
        super().__init__()
        sizes = {"vocab_size": vocab_size, "hidden": hidden, "layers": layers, "heads": heads,
                 "intermediate": intermediate, "max_positions": max_positions}
        for name, value in sizes.items():
            if not is_int(value, 1, LIMITS[name]):
                raise ValueError(f"{name} must be an integer in [1, {LIMITS[name]}], got {value!r}")
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
        if not isinstance(norm_eps, float) or not 0 < norm_eps < 1:
            raise ValueError(f"norm_eps must be a float in (0, 1), got {norm_eps!r}")
        adapt_from = layers + 1 if adapt_from is None else adapt_from
        if not is_int(adapt_from, 1, layers + 1):
            raise ValueError(f"adapt_from must be in [1, {layers + 1}] (1-{layers}: from that transformer layer, "
                             f"{layers + 1}: the head only), got {adapt_from!r}")
        self.vocab_size, self.hidden, self.heads, self.intermediate = vocab_size, hidden, heads, intermediate
        self.max_positions, self.norm_eps, self.adapt_from = max_positions, norm_eps, adapt_from
        self.words = skip_init(nn.Embedding, vocab_size, hidden)
        self.positions = skip_init(nn.Embedding, max_positions, hidden)
        self.token_type = nn.Parameter(torch.zeros(hidden))
        self.embedding_norm = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(TransformerLayer(hidden, intermediate) for _ in range(layers))
        self.build_head(hidden, lr_steps, centred, prototype_head)

    CONFIG_KEYS = frozenset({"vocab_size", "hidden", "layers", "heads", "intermediate", "max_positions", "norm_eps",
                             "adapt_from", "lr_steps", "centred", "prototype_head"})

    @classmethod
    def config_problems(cls, config: dict[str, Any]) -> list[str]:
        problems = key_problems(config, set(cls.CONFIG_KEYS)) + step_count_problems(config)
        return problems + [f"{name} must be an integer in [1, {limit}]" for name, limit in LIMITS.items()
                           if name in config and not is_int(config[name], 1, limit)]

    @classmethod
    def input_shapes(cls, config: dict[str, Any]) -> list[tuple[Any, Any]]:
        return []  # not images: the recipe's text preprocessing is checked instead

    @property
    def head_only_adapt_from(self) -> int:
        return len(self.layers) + 1

    def config(self) -> dict[str, Any]:
        return {"architecture": "bert", "vocab_size": self.vocab_size, "hidden": self.hidden,
                "layers": len(self.layers), "heads": self.heads, "intermediate": self.intermediate,
                "max_positions": self.max_positions, "norm_eps": self.norm_eps, "adapt_from": self.adapt_from,
                "lr_steps": self.lr_steps, "centred": self.centred, "prototype_head": self.prototype_head}

    def unit_of(self, name: str) -> int | None:
        """The unit (see the module's docstring) parameter ``name`` belongs to; None for the head row and rates."""
        if name.startswith(("words", "positions", "token_type", "embedding_norm")):
            return 0
        if name.startswith("layers."):
            return 1 + int(name.split(".")[1])
        return None

    def in_frozen_part(self, name: str) -> bool:
        unit = self.unit_of(name)
        return unit is not None and unit < self.adapt_from

    def embed_tokens(self, params: dict[str, Tensor], ids: Tensor) -> Tensor:
        """Unit 0: word + position + token-type-0 embeddings, layer-normed: ``[n, L, hidden]``."""
        if ids.shape[1] > self.max_positions:
            raise ValueError(f"texts of {ids.shape[1]} tokens; this encoder takes at most {self.max_positions}")
        positions = params["positions.weight"][: ids.shape[1]]
        x = F.embedding(ids, params["words.weight"]) + positions + params["token_type"]
        return self._norm(params, "embedding_norm", x)

    def _norm(self, params: dict[str, Tensor], key: str, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], params[key + ".weight"], params[key + ".bias"], self.norm_eps)

    def _layer(self, params: dict[str, Tensor], index: int, x: Tensor, mask: Tensor) -> Tensor:
        """One transformer layer: self-attention over the unmasked tokens, then the feed-forward block,
        each added back and layer-normed (BERT's post-norm order)."""
        prefix = f"layers.{index}."

        def linear(name: str, h: Tensor) -> Tensor:
            return F.linear(h, params[prefix + name + ".weight"], params[prefix + name + ".bias"])

        n, length, _ = x.shape
        per_head = self.hidden // self.heads

        def split(h: Tensor) -> Tensor:  # [n, L, hidden] -> [n, heads, L, per_head]
            return h.view(n, length, self.heads, per_head).transpose(1, 2)

        q, k, v = split(linear("query", x)), split(linear("key", x)), split(linear("value", x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(per_head)
        scores = scores + (1 - mask[:, None, None, :]) * MASKED  # padded keys get no attention
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, self.hidden)
        x = self._norm(params, prefix + "attention_norm", x + linear("attention_out", attended))
        return self._norm(params, prefix + "output_norm", x + linear("output", F.gelu(linear("intermediate", x))))

    def _layers(self, params: dict[str, Tensor], x: Tensor, mask: Tensor, layers: Sequence[int]) -> Tensor:
        for index in layers:
            x = self._layer(params, index, x, mask)
        return x

    @staticmethod
    def mean_pool(x: Tensor, mask: Tensor) -> Tensor:
        """The mean of the unmasked tokens' features (sentence-transformers' pooling)."""
        return (x * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)

    def frozen_part(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        mask = (x != PAD_ID).to(params["words.weight"].dtype)
        h = self._layers(params, self.embed_tokens(params, x), mask, range(self.adapt_from - 1))
        return self._frozen_output(h, mask)

    def units_before(self, params: dict[str, Tensor], x: Tensor, unit: int) -> Tensor:
        """Units ``0 .. unit - 1`` on token ids ``x``: per token, the attention mask as the last channel
        (``[n, L, hidden + 1]``). What ``train --meta-learn-from UNIT`` caches once per text."""
        if not 1 <= unit <= self.adapt_from:
            raise ValueError(f"the units before {unit}: it must be in [1, adapt_from = {self.adapt_from}]")
        mask = (x != PAD_ID).to(params["words.weight"].dtype)
        h = self._layers(params, self.embed_tokens(params, x), mask, range(unit - 1))
        return torch.cat([h, mask.unsqueeze(-1)], dim=-1)

    def frozen_part_from(self, params: dict[str, Tensor], h: Tensor, unit: int) -> Tensor:
        """The rest of the frozen part, units ``unit .. adapt_from - 1``, on :meth:`units_before` ``(unit)``."""
        x, mask = h[..., :-1], h[..., -1]
        return self._frozen_output(self._layers(params, x, mask, range(unit - 1, self.adapt_from - 1)), mask)

    def _frozen_output(self, h: Tensor, mask: Tensor) -> Tensor:
        """The frozen part's output from its last unit's token features: pooled for a head-only inner
        loop, else per token with the mask as the last channel."""
        if self.adapt_from == self.head_only_adapt_from:
            return self.mean_pool(h, mask)
        return torch.cat([h, mask.unsqueeze(-1)], dim=-1)

    def pooled_features(self, params: dict[str, Tensor], h: Tensor, n_ref: int | None = None) -> Tensor:
        if self.adapt_from == self.head_only_adapt_from:  # the frozen part already pooled
            return h
        x, mask = h[..., :-1], h[..., -1]
        return self.mean_pool(self._layers(params, x, mask, range(self.adapt_from - 1, len(self.layers))), mask)

    def embed(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        """Mean-pooled features ``[n, hidden]`` (sentence-transformers' embedding before its normalization)."""
        mask = (x != PAD_ID).to(params["words.weight"].dtype)
        return self.mean_pool(self._layers(params, self.embed_tokens(params, x), mask, range(len(self.layers))), mask)

    def join_frozen(self, parts: Sequence[Tensor]) -> Tensor:
        """Frozen-part outputs of several batches as one: per-token ones padded to the longest batch
        (padding is masked), pooled ones as they are."""
        if self.adapt_from == self.head_only_adapt_from:
            return torch.cat(list(parts))
        length = max(part.shape[1] for part in parts)
        return torch.cat([F.pad(part, (0, 0, 0, length - part.shape[1])) for part in parts])

    @torch.no_grad()
    def fold(self, params: dict[str, Tensor], x_support: Tensor) -> nn.Module:
        """The adapted classifier as one eval-mode module, token ids -> logits. Nothing to fold
        (a transformer has no norm statistics): it computes :meth:`apply_params` with the adapted weights."""
        return AdaptedText(self, {name: value.detach() for name, value in params.items()}).eval()


class AdaptedText(nn.Module):
    """An adapted text classifier: the encoder's pure forward bound to one task's weights."""

    def __init__(self, encoder: BertEncoder, params: dict[str, Tensor]) -> None:
        super().__init__()
        self.encoder, self.params = encoder, params

    def forward(self, ids: Tensor) -> Tensor:
        return self.encoder.apply_params(self.params, ids)
