"""Turning texts into a text encoder's input, identically for training data and served requests.

A :class:`TextPreprocessing` is a text model's recipe entry: the tokenizer (a Hugging Face
``tokenizer.json``, carried inside the model file so that serving needs the small ``tokenizers``
library and no download) and the longest token sequence the model reads. Training tokenizes every
dataset text through :meth:`TextPreprocessing.token_ids`, and serving every request's texts, so a
served model sees its input made exactly as in training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

#: Texts longer than this many characters are refused (only the first max_length tokens are read anyway).
MAX_TEXT_CHARACTERS = 20_000
#: The longest token sequence a recipe may ask for (positions beyond the encoder's table are refused too).
MAX_TOKENS = 512


class TextError(ValueError):
    """An input that is not a usable text; the message says which and why."""


@dataclass(frozen=True)
class TextPreprocessing:
    """How a text model tokenizes: ``tokenizer`` is the ``tokenizer.json`` text, ``max_length`` the
    number of tokens kept (``[CLS]`` and ``[SEP]`` included; longer texts are truncated, as in training)."""

    tokenizer: str = field(repr=False)
    max_length: int
    kind: str = "text"

    def __post_init__(self) -> None:
        if self.kind != "text":
            raise ValueError(f"text preprocessing has kind 'text', got {self.kind!r}")
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) \
                or not 4 <= self.max_length <= MAX_TOKENS:
            raise ValueError(f"max_length must be an integer in [4, {MAX_TOKENS}], got {self.max_length!r}")
        if not isinstance(self.tokenizer, str):
            raise ValueError("the tokenizer must be a tokenizer.json text")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextPreprocessing:
        if not isinstance(data, dict) or set(data) != {"kind", "tokenizer", "max_length"}:
            raise ValueError("text preprocessing needs exactly kind, tokenizer and max_length")
        preprocessing = cls(**data)
        _ = preprocessing.compiled  # a tokenizer that does not parse is a bad recipe, found at load time
        return preprocessing

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tokenizer": self.tokenizer, "max_length": self.max_length}

    @cached_property
    def compiled(self) -> Any:
        """The ``tokenizers.Tokenizer``, truncating to ``max_length``, not padding (:meth:`token_ids` pads)."""
        from tokenizers import Tokenizer  # only text models need it

        try:
            tokenizer = Tokenizer.from_str(self.tokenizer)
        except Exception as error:  # its own parse errors
            raise ValueError(f"the recipe's tokenizer does not load ({error})") from None
        tokenizer.enable_truncation(self.max_length)
        tokenizer.no_padding()
        return tokenizer

    def token_ids(self, texts: Sequence[str], names: Sequence[str] | None = None) -> Tensor:
        """Checked texts -> int64 token ids ``[n, L]``, right-padded with 0 to the longest (``L <= max_length``)."""
        names = names or [f"text #{i + 1}" for i in range(len(texts))]
        for text, name in zip(texts, names):
            check_text(text, name)
        encodings = self.compiled.encode_batch(list(texts))
        length = max(len(encoding.ids) for encoding in encodings)
        ids = torch.zeros(len(encodings), length, dtype=torch.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids, dtype=torch.int64)
        return ids


def length_batches(ids: Tensor, size: int = 64) -> list[tuple[Tensor, Tensor]]:
    """Rows of padded token ids ``[n, L]`` as ``(row indices, ids)`` batches of up to ``size`` rows of
    similar length, each cut to its own longest text: attention costs every layer the square of the
    padded length, so a batch padded to one long review would cost a short text as much as that review."""
    lengths = (ids != 0).sum(1)
    order = torch.argsort(lengths, stable=True)
    batches = []
    for rows in order.split(size):
        batches.append((rows, ids[rows, : int(lengths[rows].max())]))
    return batches


def in_length_batches(compute: Callable[[Tensor], Tensor], ids: Tensor, join: Callable[[Sequence[Tensor]], Tensor],
                      size: int = 64, description: str | None = None) -> Tensor:
    """``compute`` over padded token ids ``[n, L]`` in :func:`length_batches`, the outputs ``join``-ed
    (a network's :meth:`~fewshot_serve.networks.MetaNetwork.join_frozen`) and put back in the rows'
    order; ``description``: shown on a progress bar."""
    batches = length_batches(ids, size)
    rows, parts = zip(*[(rows, compute(batch))
                        for rows, batch in tqdm(batches, desc=description, disable=description is None, leave=False)])
    return join(parts)[torch.argsort(torch.cat(rows))]


def check_text(text: Any, name: str) -> None:
    """Raise :class:`TextError` unless ``text`` is a non-empty string of at most :data:`MAX_TEXT_CHARACTERS`."""
    if not isinstance(text, str):
        raise TextError(f"{name}: expected a string, got {type(text).__name__}")
    if not text.strip():
        raise TextError(f"{name}: the text is empty")
    if len(text) > MAX_TEXT_CHARACTERS:
        raise TextError(f"{name}: {len(text)} characters; at most {MAX_TEXT_CHARACTERS} per text")


def is_text_recipe(preprocessing: Any) -> bool:
    """Whether a recipe's preprocessing entry is a text model's."""
    return isinstance(preprocessing, dict) and preprocessing.get("kind") == "text"
