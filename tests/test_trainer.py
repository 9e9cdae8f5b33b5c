"""The trainer and the CLI on a small generated dataset: export, logs, plot, resume, evaluate."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fewshot_serve import cli
from fewshot_serve.data.sources import DataSpec
from fewshot_serve.files.model_file import load_model
from fewshot_serve.training.checkpoint import load_checkpoint
from fewshot_serve.training.meta_learning import MetaLearner
from fewshot_serve.training.trainer import TrainConfig, train


def config(tmp_path, glyph_tree, **overrides) -> TrainConfig:
    settings = dict(
        out=tmp_path / "glyphs.safetensors", algorithm="maml",
        data=DataSpec("folder", glyph_tree, image_size=16, channels=1), ways=3, shots=1, queries=2,
        train_steps=1, test_steps=2, inner_lrs=(0.4,), meta_batch=4, iterations=6, val_every=3, val_episodes=10,
        checkpoint_every=2, seed=3,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile"])
def test_training_exports_a_loadable_model_with_its_recipe(tmp_path, glyph_tree, algorithm):
    result = train(config(tmp_path, glyph_tree, algorithm=algorithm), progress=False)
    network, recipe = load_model(result.model_path)
    assert recipe.algorithm == algorithm and recipe.dataset == "folder"
    assert (recipe.train_steps, recipe.test_steps, recipe.inner_lrs) == (1, 2, [0.4])
    assert recipe.class_counts == {"train": 15, "val": 3, "test": 6}
    assert recipe.preprocessing["image_size"] == 16 and 0 < recipe.preprocessing["mean"][0] < 1
    assert set(recipe.val_metric) == {"accuracy"} and 0 <= recipe.val_metric["accuracy"] <= 1
    run = result.model_path.with_suffix(".run")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["iteration"] for r in log if "val_metric" in r] == [3, 6]
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_the_exported_model_is_the_best_validated_one(tmp_path, glyph_tree):
    result = train(config(tmp_path, glyph_tree), progress=False)
    state = load_checkpoint(result.model_path.with_suffix(".run") / "checkpoint.safetensors")
    exported = load_file(str(result.model_path))
    assert state.best_iteration == result.best_iteration
    for key, value in state.best_params.items():
        assert torch.equal(exported[key], value)


def test_a_maml_plus_plus_file_continues_with_its_learned_rates_and_per_step_norms(tmp_path, glyph_tree):
    maml_plus_plus = dict(learned_lrs=True, per_step_norm=True, train_steps=2, iterations=3)
    first = train(config(tmp_path / "first", glyph_tree, **maml_plus_plus), progress=False)
    start, _ = load_model(first.model_path)
    assert not torch.allclose(start.step_lrs, torch.full_like(start.step_lrs, 0.4))  # learned, so it can tell
    # a meta lr of 1e-12 moves no weight visibly: the run's network is the file's, rates and norms included
    again = train(config(tmp_path / "again", glyph_tree, init=first.model_path, meta_lr=1e-12, **maml_plus_plus),
                  progress=False)
    continued, _ = load_model(again.model_path)
    for key, value in start.state_dict().items():
        torch.testing.assert_close(continued.state_dict()[key], value, rtol=0, atol=1e-9, msg=key)
    with pytest.raises(ValueError, match="per-step norms for 2 inner steps"):
        train(config(tmp_path / "other", glyph_tree, init=first.model_path, **{**maml_plus_plus, "train_steps": 3}))


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_a_crashed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path, glyph_tree, monkeypatch,
                                                                           algorithm):
    straight = train(config(tmp_path / "straight", glyph_tree, algorithm=algorithm), progress=False)

    crashing = config(tmp_path / "crashed", glyph_tree, algorithm=algorithm)
    real_step, calls = MetaLearner.update_direction, []

    def step_then_crash(self, batch, iteration):
        calls.append(iteration)
        if len(calls) == 4:  # dies during iteration 4, after the checkpoint of iteration 2
            raise KeyboardInterrupt
        return real_step(self, batch, iteration)

    monkeypatch.setattr(MetaLearner, "update_direction", step_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(crashing, progress=False)
    monkeypatch.setattr(MetaLearner, "update_direction", real_step)
    assert load_checkpoint(crashing.run_dir / "checkpoint.safetensors").iteration == 2
    crashing.resume = True
    resumed = train(crashing, progress=False)

    a = load_checkpoint(straight.model_path.with_suffix(".run") / "checkpoint.safetensors")
    b = load_checkpoint(resumed.model_path.with_suffix(".run") / "checkpoint.safetensors")
    for key in a.weights:
        assert torch.equal(a.weights[key], b.weights[key]), key
        assert torch.equal(a.best_params[key], b.best_params[key]), key
    assert resumed.best_score == straight.best_score
    log = [json.loads(line) for line in (crashing.run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]  # no duplicates from the crash


def test_resume_refuses_different_settings(tmp_path, glyph_tree):
    train(config(tmp_path, glyph_tree, iterations=2), progress=False)
    with pytest.raises(ValueError, match="different settings.*inner_lrs"):
        train(config(tmp_path, glyph_tree, iterations=2, inner_lrs=(0.1,), resume=True), progress=False)


def test_a_checkpoint_from_before_a_setting_existed_resumes_while_the_setting_stays_at_its_default(
        tmp_path, glyph_tree):
    from fewshot_serve.training.checkpoint import save_checkpoint

    train(config(tmp_path, glyph_tree, iterations=2), progress=False)
    path = tmp_path / "glyphs.run" / "checkpoint.safetensors"
    state = load_checkpoint(path)
    for later in ("prototype_head", "cosine_meta_lr"):  # as a run made before these options existed recorded it
        del state.config[later]
    save_checkpoint(path, state)
    assert train(config(tmp_path, glyph_tree, iterations=2, resume=True), progress=False).best_iteration == 2
    with pytest.raises(ValueError, match=r"different settings \(cosine_meta_lr\)"):
        train(config(tmp_path, glyph_tree, iterations=2, cosine_meta_lr=True, resume=True), progress=False)


def test_a_checkpoint_from_before_a_setting_was_renamed_resumes_under_the_new_name(tmp_path, glyph_tree):
    from fewshot_serve.training.checkpoint import save_checkpoint

    train(config(tmp_path, glyph_tree, iterations=2, train_steps=2), progress=False)
    path = tmp_path / "glyphs.run" / "checkpoint.safetensors"
    state = load_checkpoint(path)
    state.config["inner_steps"] = state.config.pop("train_steps")  # as checkpoints before the rename recorded it
    save_checkpoint(path, state)
    assert train(config(tmp_path, glyph_tree, iterations=2, train_steps=2, resume=True),
                 progress=False).best_iteration == 2
    with pytest.raises(ValueError, match=r"different settings \(train_steps\)"):
        train(config(tmp_path, glyph_tree, iterations=2, train_steps=3, resume=True), progress=False)


def test_divergence_stops_with_a_clear_error(tmp_path, glyph_tree):
    with pytest.raises(FloatingPointError, match="diverged at iteration"):
        # two steps: the first moves only the shared head row, the second the whole network by 1e30
        train(config(tmp_path, glyph_tree, inner_lrs=(1e30,), train_steps=2, algorithm="fomaml"), progress=False)


def test_cli_train_then_evaluate_prints_a_json_summary(tmp_path, glyph_tree, capsys):
    out = tmp_path / "cli.safetensors"
    assert cli.main(["train", "--algorithm", "fomaml", "--dataset", "folder", "--data-root", str(glyph_tree),
                     "--image-size", "16", "--channels", "1", "--ways", "3", "--queries", "2", "--meta-batch", "2",
                     "--iterations", "2", "--val-every", "2", "--val-episodes", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    _, recipe = load_model(out)
    assert recipe.command.startswith("fewshot-serve train --algorithm fomaml")
    assert cli.main(["evaluate", str(out), "--data-root", str(glyph_tree), "--ways", "3", "--shots", "1",
                     "--queries", "2", "--episodes", "30"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary) == {"accuracy", "ci95", "ways", "shots", "steps", "episodes", "split"}
    assert summary["episodes"] == 30 and summary["ways"] == 3 and 0 <= summary["accuracy"] <= 1
    assert summary["ci95"] > 0 and "95% CI" in lines[-2] and summary["split"] == "test"
    # the validation split (3 of the tree's classes; test has 6) is there for choosing between models
    four_way = [str(out), "--data-root", str(glyph_tree), "--ways", "4", "--queries", "2", "--episodes", "3"]
    assert cli.main(["evaluate", *four_way]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", *four_way, "--split", "val"]) == 2
    assert "this split has 3" in capsys.readouterr().err


def test_cli_reports_bad_arguments_without_a_traceback(tmp_path, capsys):
    assert cli.main(["train", "--dataset", "folder", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "needs --data-root" in capsys.readouterr().err
    assert cli.main(["evaluate", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such model file" in capsys.readouterr().err


def test_a_checkpoint_written_before_the_neutral_names_still_loads(tmp_path):
    """Checkpoints named their tensors meta/ and adam/ before both stages shared them; they still resume."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from fewshot_serve.training.checkpoint import STATE_KEY, TrainingState, save_checkpoint

    weight = torch.nn.Parameter(torch.arange(4.0))
    optimizer = torch.optim.Adam([weight])
    weight.grad = torch.ones(4)
    optimizer.step()
    state = TrainingState(3, {"w": weight.detach()}, {"w": weight.detach() * 2}, 0.5, 2, optimizer.state_dict(),
                          torch.Generator().get_state(), {"seed": 0})
    save_checkpoint(tmp_path / "new.safetensors", state)
    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as handle:
        renamed = {k.replace("weights/", "meta/").replace("optimizer/", "adam/"): handle.get_tensor(k)
                   for k in handle.keys()}
        metadata = handle.metadata()
    assert any(k.startswith("meta/") for k in renamed) and any(k.startswith("adam/") for k in renamed)
    save_file(renamed, str(tmp_path / "old.safetensors"), metadata={STATE_KEY: metadata[STATE_KEY]})
    for name in ("new", "old"):
        loaded = load_checkpoint(tmp_path / f"{name}.safetensors")
        assert torch.equal(loaded.weights["w"], weight.detach()) and torch.equal(loaded.best_params["w"], 2 * weight)
        assert torch.equal(loaded.optimizer["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
