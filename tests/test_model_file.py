"""Export -> load round trip, and clear refusals of bad model files."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fewshot_serve.files.model_file import RECIPE_KEY, ModelFileError, Recipe, load_model, save_model
from fewshot_serve.networks import Conv4
from fewshot_serve.preprocessing import Preprocessing


def make_recipe(**overrides) -> Recipe:
    fields = dict(
        network={"architecture": "conv4", "in_channels": 1, "filters": 4, "image_size": 16},
        preprocessing=Preprocessing(16, 1, True, "pad", (0.1,), (0.3,)).to_dict(),
        inner_lrs=[0.4, 0.3], train_steps=2, test_steps=4, algorithm="maml", dataset="omniglot",
        ways=5, shots=1, queries=15, class_counts={"train": 10, "val": 2, "test": 3}, split_seed=0,
        val_metric={"accuracy": 0.9}, command="fewshot-serve train ...",
    )
    fields.update(overrides)
    return Recipe(**fields)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    network = Conv4(1, 4, 16)
    path = tmp_path / "model.safetensors"
    save_model(path, network, make_recipe())
    return path, network


def test_round_trip_gives_identical_parameters_and_recipe(saved):
    path, network = saved
    loaded, recipe = load_model(path)
    assert recipe == make_recipe()
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert recipe.inner_loop.inner_lrs == (0.4, 0.3) and recipe.image_preprocessing().mean == (0.1,)
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left nothing behind


def rewrite(path, tensors=None, recipe=None, metadata=None):
    base = {k: v.clone() for k, v in Conv4(1, 4, 16).state_dict().items()}
    tensors = base if tensors is None else tensors(base)
    if metadata is None:
        metadata = {RECIPE_KEY: json.dumps(recipe if recipe is not None else json.loads(make_recipe().to_json()))}
    save_file(tensors, str(path), metadata=metadata)
    return path


def recipe_with(**changes):
    data = json.loads(make_recipe().to_json())
    data.update(changes)
    return data


@pytest.mark.parametrize("tensors, recipe, metadata, message", [
    (lambda t: {k: v for k, v in t.items() if k != "head.bias"}, None, None, r"missing tensors \['head.bias'\]"),
    (lambda t: {**t, "extra": torch.zeros(1)}, None, None, r"unexpected tensors \['extra'\]"),
    (lambda t: {**t, "head.weight": torch.zeros(5, 4)}, None, None, "has shape .5, 4., expected .1, 4."),
    (lambda t: {**t, "head.bias": torch.zeros(1, dtype=torch.int64)}, None, None, "must be floating point"),
    (lambda t: {**t, "head.bias": torch.tensor([float("nan")])}, None, None, "NaN"),
    (None, recipe_with(format_version=99), None, "unknown format version 99"),
    (None, recipe_with(test_steps=-1), None, "step counts"),
    (None, recipe_with(train_steps=10**9), None, "step counts"),
    (None, recipe_with(inner_lrs=[]), None, "inner_lrs"),
    (None, recipe_with(algorithm="sgd"), None, "unknown algorithm"),
    (None, recipe_with(network={"architecture": "conv4", "in_channels": 1, "filters": 4, "image_size": 100000}),
     None, "image size"),
    (None, recipe_with(preprocessing={**make_recipe().preprocessing, "image_size": 100000}), None, "image_size"),
    (None, recipe_with(network={"architecture": "resnet"}), None, "unknown architecture"),
    (None, recipe_with(network={"architecture": "conv4", "in_channels": 1, "filters": 4, "image_size": 16,
                                "norm_states": 10**6}), None, "norm_states and lr_steps"),
    (None, recipe_with(network={"architecture": "conv4", "in_channels": 1, "filters": 4, "image_size": 16,
                                "lr_steps": 2}), None, r"missing tensors \['step_lrs'\]"),
    (None, recipe_with(surprise=1), None, "recipe fields"),
    (None, None, {}, "not a fewshot-serve model file"),
    (None, None, {RECIPE_KEY: "{not json"}, "not valid JSON"),
])
def test_bad_files_are_rejected_with_a_clear_error(tmp_path, tensors, recipe, metadata, message):
    path = rewrite(tmp_path / "bad.safetensors", tensors, recipe, metadata)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_maml_plus_plus_tensors_round_trip_and_version_1_files_still_load(tmp_path):
    torch.manual_seed(0)
    network = Conv4(1, 4, 16, norm_states=3, lr_steps=2)
    network.reset_step_lrs((0.5, 0.25))
    config = network.config()
    save_model(tmp_path / "plus.safetensors", network, make_recipe(network=config))
    loaded, recipe = load_model(tmp_path / "plus.safetensors")
    assert recipe.format_version == 2 and loaded.config() == config
    assert loaded.step_lrs[:, 1].tolist() == [0.25] * 10 and loaded.blocks[0].norm.weight.shape == (3, 4)
    old = recipe_with(format_version=1)  # written before MAML++: no norm_states / lr_steps entries
    loaded, recipe = load_model(rewrite(tmp_path / "v1.safetensors", recipe=old))
    assert recipe.format_version == 1 and (loaded.lr_steps, loaded.norm_states) == (0, 0)


def test_truncated_and_non_safetensors_files_are_rejected(saved, tmp_path):
    path, _ = saved
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        load_model(truncated)
    pickle_like = tmp_path / "model.pt"
    pickle_like.write_bytes(b"\x80\x04\x95 this is a pickle, and it is never unpickled")
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        load_model(pickle_like)
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "absent.safetensors")


def test_set_steps_changes_only_the_serving_step_count_and_records_the_call(saved, tmp_path, capsys):
    from fewshot_serve.cli import main

    path, network = saved
    out = tmp_path / "ten.safetensors"
    assert main(["set-steps", str(path), "--test-steps", "10", "--out", str(out)]) == 0
    loaded, recipe = load_model(out)
    assert recipe.test_steps == 10 and recipe.train_steps == 2
    assert recipe.command == f"fewshot-serve train ...; fewshot-serve set-steps {path} --test-steps 10 --out {out}"
    assert recipe == make_recipe(test_steps=10, command=recipe.command)
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert main(["set-steps", str(out), "--test-steps", "3", "--out", str(out)]) == 0  # in place
    assert load_model(out)[1].test_steps == 3


@pytest.mark.parametrize("steps", ["0", "101"])
def test_set_steps_refuses_a_step_count_out_of_range_and_writes_nothing(saved, tmp_path, capsys, steps):
    from fewshot_serve.cli import main

    path, _ = saved
    out = tmp_path / "bad.safetensors"
    assert main(["set-steps", str(path), "--test-steps", steps, "--out", str(out)]) == 2
    assert "test-time steps must be an integer in [1, 100]" in capsys.readouterr().err
    assert not out.exists()


def tensor_bytes(file):
    """The bytes of a safetensors file's tensors: after an 8-byte header length and the JSON header."""
    data = file.read_bytes()
    return len(data) - 8 - int.from_bytes(data[:8], "little")


def test_store_float16_keeps_the_recipe_rounds_each_weight_to_float16_and_halves_the_file(saved, tmp_path, capsys):
    from fewshot_serve.cli import main
    from fewshot_serve.files.model_file import stored_dtype

    path, network = saved
    out = tmp_path / "half.safetensors"
    assert main(["store", str(path), "--dtype", "float16", "--out", str(out)]) == 0
    loaded, recipe = load_model(out)
    assert recipe == make_recipe(
        command=f"fewshot-serve train ...; fewshot-serve store {path} --dtype float16 --out {out}")
    assert stored_dtype(out) == torch.float16 and stored_dtype(path) == torch.float32
    for key, value in network.state_dict().items():
        assert loaded.state_dict()[key].dtype == torch.float32
        assert torch.equal(loaded.state_dict()[key], value.half().float()), key
    assert any(not torch.equal(v, v.half().float()) for v in network.state_dict().values())  # rounding happened
    weights = sum(v.numel() for v in network.state_dict().values())
    assert (tensor_bytes(path), tensor_bytes(out)) == (4 * weights, 2 * weights)
    assert main(["set-steps", str(out), "--test-steps", "7", "--out", str(out)]) == 0  # stays half
    assert stored_dtype(out) == torch.float16 and load_model(out)[1].test_steps == 7


def test_store_int8_moves_each_weight_by_at_most_half_a_step_of_its_channel_and_quarters_the_matrices(
        saved, tmp_path):
    from fewshot_serve.cli import main
    from fewshot_serve.files.model_file import stored_dtype

    path, network = saved
    with torch.no_grad():
        network.head.weight.normal_()  # zero-initialized
        network.blocks[1].conv.weight[2] = 0.0  # an all-zero channel has no scale to divide by: it stays zero
    save_model(path, network, make_recipe())
    out = tmp_path / "int8.safetensors"
    assert main(["store", str(path), "--dtype", "int8", "--out", str(out)]) == 0
    loaded = load_model(out)[0].state_dict()
    matrices = {k: v for k, v in network.state_dict().items() if v.dim() >= 2}
    assert matrices and stored_dtype(out) == torch.int8
    for key, value in network.state_dict().items():
        if key not in matrices:
            assert torch.equal(loaded[key], value), key  # vectors are kept exactly
            continue
        rows, stored = value.reshape(len(value), -1), loaded[key].reshape(len(value), -1)
        step = rows.abs().amax(dim=1, keepdim=True) / 127
        assert ((stored - rows).abs() <= step / 2 * (1 + 1e-5)).all(), key
        assert torch.allclose(stored.abs().amax(dim=1), rows.abs().amax(dim=1), rtol=1e-6, atol=0), key  # full range
        assert not torch.equal(stored, rows), key  # rounding happened
    assert torch.equal(loaded["blocks.1.conv.weight"][2], torch.zeros(4, 3, 3))
    weights = {k: v.numel() for k, v in network.state_dict().items()}
    rows = sum(len(v) for v in matrices.values())
    assert tensor_bytes(out) == sum(weights[k] for k in matrices) + 4 * rows + 4 * sum(
        n for k, n in weights.items() if k not in matrices)
    assert main(["set-steps", str(out), "--test-steps", "7", "--out", str(out)]) == 0  # stays int8, not requantized
    assert stored_dtype(out) == torch.int8
    assert all(torch.equal(v, loaded[k]) for k, v in load_model(out)[0].state_dict().items())


SCALES = "blocks.0.conv.weight.int8_scale"


@pytest.mark.parametrize("change, message", [
    (lambda t: {k: v for k, v in t.items() if k != SCALES}, rf"missing tensors \['{SCALES}'\]"),
    (lambda t: {**t, "head.bias": torch.zeros(1, dtype=torch.int8), "head.bias.int8_scale": torch.ones(1)},
     "only tensors of two or more"),
    (lambda t: {**t, SCALES: -t[SCALES]}, "negative scales"),
    (lambda t: {**t, SCALES: t[SCALES][:1]}, f"'{SCALES}' has shape"),
    (lambda t: {**t, SCALES: t[SCALES] * float("nan")}, "NaN or infinite"),
])
def test_bad_int8_files_are_rejected_with_a_clear_error(saved, tmp_path, change, message):
    from fewshot_serve.files.model_file import store_weights

    path, _ = saved
    store_weights(path, path, torch.int8)
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = handle.metadata()
    save_file(change(tensors), str(path), metadata=metadata)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_store_float16_refuses_a_weight_beyond_float16_and_writes_nothing(saved, tmp_path, capsys):
    from fewshot_serve.cli import main

    path, network = saved
    with torch.no_grad():
        network.head.bias[0] = 1e5
    save_model(path, network, make_recipe())
    out = tmp_path / "half.safetensors"
    assert main(["store", str(path), "--dtype", "float16", "--out", str(out)]) == 2
    assert "'head.bias' does not fit torch.float16" in capsys.readouterr().err
    assert not out.exists()


def test_a_bfloat16_file_made_elsewhere_loads_and_set_steps_rewrites_it_exactly_in_float32(saved, tmp_path):
    from fewshot_serve.files.model_file import set_test_steps, stored_dtype

    path, network = saved
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file({k: v.to(torch.bfloat16) for k, v in network.state_dict().items()}, str(path), metadata=metadata)
    assert stored_dtype(path) == torch.float32  # a storage save_model does not write keeps every weight as float32
    out = tmp_path / "steps.safetensors"
    set_test_steps(path, 7, out)
    assert stored_dtype(out) == torch.float32 and load_model(out)[1].test_steps == 7
    for key, value in load_model(out)[0].state_dict().items():
        assert torch.equal(value, network.state_dict()[key].bfloat16().float()), key
