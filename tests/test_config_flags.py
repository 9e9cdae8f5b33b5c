"""The train and pretrain flags are generated from the configuration dataclasses: a setting is written once."""

import argparse
from dataclasses import asdict, dataclass

import pytest

from fewshot_serve import cli
from fewshot_serve.config_flags import add_setting_flags, flagged_fields, setting
from fewshot_serve.training.pretraining import PretrainConfig
from fewshot_serve.training.trainer import TrainConfig


def parsed_config(config_class, *flags):
    argv = [{TrainConfig: "train", PretrainConfig: "pretrain"}[config_class], "--out", "x.safetensors", *flags]
    args = cli.build_parser().parse_args(argv)
    if config_class is TrainConfig:
        args = cli._with_maml_plus_plus(args)
    return cli._config_from_flags(config_class, args, argv)


@pytest.mark.parametrize("config_class", [TrainConfig, PretrainConfig])
def test_no_flags_give_the_dataclass_defaults(config_class):
    from_flags = asdict(parsed_config(config_class))
    assert from_flags.pop("command") == "fewshot-serve " + ("train" if config_class is TrainConfig else "pretrain") \
        + " --out x.safetensors"
    from_python = asdict(config_class(out="x.safetensors"))
    from_python.pop("command")
    assert from_flags == from_python


@pytest.mark.parametrize("config_class", [TrainConfig, PretrainConfig])
def test_every_setting_is_a_flag_of_its_command(config_class):
    command = {TrainConfig: "train", PretrainConfig: "pretrain"}[config_class]
    parser = cli.build_parser()
    subparser = parser._subparsers._group_actions[0].choices[command]
    destinations = {action.dest for action in subparser._actions}
    assert {f.name for f in flagged_fields(config_class)} <= destinations
    assert {"dataset", "data_root", "split_seed"} <= destinations


def test_flags_reach_their_fields_under_their_names_and_earlier_ones():
    config = parsed_config(TrainConfig, "--inner-steps", "3", "--inner-lr", "0.4,0.2", "--no-vmap", "--widths", "8",
                           "--dataset", "folder", "--channels", "1", "--maml-plus-plus", "--iterations", "20")
    assert (config.train_steps, config.test_steps, config.inner_lrs) == (3, 3, (0.4, 0.2))
    assert config.vectorize is False and config.widths == (8,)
    assert (config.data.dataset, config.data.channels) == ("folder", 1)
    assert config.learned_lrs and config.per_step_norm and config.multi_step_loss == 2
    assert config.first_order_iterations == 6 and config.cosine_meta_lr
    assert parsed_config(TrainConfig, "--train-steps", "2", "--test-steps", "5").test_steps == 5
    pretrain = parsed_config(PretrainConfig, "--widths", "8,16,32,64", "--bf16", "--stop-after", "3")
    assert pretrain.widths == (8, 16, 32, 64) and pretrain.bf16 is True and pretrain.stop_after == 3


@pytest.mark.parametrize("flags, message", [(["--inner-lr", "0.1,-1"], "learning rates must be at least 0"),
                                            (["--widths", "8,x"], "expected comma-separated ints"),
                                            (["--channels", "2"], "invalid choice")])
def test_bad_values_are_refused_by_the_parser(flags, message, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--out", "x", *flags])
    assert message in capsys.readouterr().err


def test_help_comes_from_the_field_with_its_default():
    @dataclass
    class Settings:
        out: str = setting(help="where")
        rate: float = setting(0.5, "how fast, in %")
        quiet: bool = setting(False, "say less")
        note: str = "not a flag"

    parser = argparse.ArgumentParser()
    add_setting_flags(parser, Settings)
    text = parser.format_help()
    assert "how fast, in % (default: 0.5)" in text and "--quiet" in text and "--note" not in text
    assert parser.parse_args(["--out", "o", "--quiet"]) == argparse.Namespace(out="o", rate=0.5, quiet=True)
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --out has no default: required
    with pytest.raises(ValueError, match="needs its help"):
        setting(1)
