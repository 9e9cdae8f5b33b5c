"""Command-line flags written once, on the configuration dataclasses' fields.

A run's settings (:class:`~fewshot_serve.training.trainer.TrainConfig`,
:class:`~fewshot_serve.training.pretraining.PretrainConfig`, :class:`~fewshot_serve.data.sources.DataSpec`)
are dataclass fields, the keywords of the Python API and the flags of ``fewshot-serve train`` /
``pretrain``. Writing each three times let a flag's default drift from its field's; so a field made
with :func:`setting` carries its help text, and the parser is generated from the fields: the flag's
name is the field's (``meta_batch`` -> ``--meta-batch``), its type and default are the field's, and
a ``bool`` is a switch. A field without help (``command``, a recipe constant) is no flag.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, Field, field, fields
from pathlib import Path
from typing import Any

HELP, FLAG, ALIASES, PARSE, METAVAR, CHOICES, GROUP = "help", "flag", "aliases", "parse", "metavar", "choices", "group"


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    flag: str | None = None,
    aliases: Sequence[str] = (),
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    choices: Sequence[Any] | None = None,
    group: str | None = None,
) -> Any:
    """A dataclass field that is also a flag (``help`` is required: it is what makes it one).

    ``flag`` renames it (``--vmap`` for ``vectorize``), ``aliases`` keep earlier names working,
    ``parse`` turns the text into the value (comma-separated lists), ``group`` is a heading in ``--help``.
    """
    if not help:
        raise ValueError("a setting needs its help text")
    metadata = {HELP: help, FLAG: flag, ALIASES: tuple(aliases), PARSE: parse, METAVAR: metavar,
                CHOICES: choices, GROUP: group}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def flagged_fields(config_class: type) -> Iterator[Field]:
    """The fields of ``config_class`` that are flags, in declaration order."""
    return (f for f in fields(config_class) if HELP in f.metadata)


def add_setting_flags(
    parser: argparse.ArgumentParser,
    config_class: type,
    defaults: Mapping[str, Any] | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
    skip: Sequence[str] = (),
) -> dict[str, argparse._ArgumentGroup]:
    """Add a flag for each of ``config_class``'s settings, less ``skip``.

    ``defaults`` and ``choices`` override the field's where one command differs (``pretrain``'s
    dataset). Returns the argument groups by heading, for a command's own flags to join them.
    """
    hints = typing.get_type_hints(config_class)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for spec in flagged_fields(config_class):
        if spec.name in skip:
            continue
        meta = spec.metadata
        default = (defaults or {}).get(spec.name, _field_default(spec))
        options = _options(hints[spec.name], default, meta[PARSE])
        allowed = (choices or {}).get(spec.name, meta[CHOICES])
        if allowed is not None:
            options["choices"] = allowed
        if meta[METAVAR]:
            options["metavar"] = meta[METAVAR]
        title = meta[GROUP]
        if title is not None and title not in groups:
            groups[title] = parser.add_argument_group(title)
        target = parser if title is None else groups[title]
        names = [meta[FLAG] or "--" + spec.name.replace("_", "-"), *meta[ALIASES]]
        target.add_argument(*names, dest=spec.name, help=_help(meta[HELP], default, options), **options)
    return groups


def settings_from_flags(config_class: type, args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of ``config_class`` that ``args`` holds (the settings its command has flags for)."""
    return {f.name: getattr(args, f.name) for f in flagged_fields(config_class) if hasattr(args, f.name)}


def _field_default(spec: Field) -> Any:
    if spec.default is not MISSING:
        return spec.default
    if spec.default_factory is not MISSING:
        return spec.default_factory()
    return MISSING


def _options(hint: Any, default: Any, parse: Callable[[str], Any] | None) -> dict[str, Any]:
    """argparse's keywords for a field of type ``hint``: a switch for a bool, else a typed value."""
    kind = parse or _value_type(hint)
    if default is MISSING:
        return {"type": kind, "required": True}
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction if default is None else "store_true", "default": default}
    return {"type": kind, "default": default}


def _value_type(hint: Any) -> Any:
    """``int`` for ``int | None``; the one non-None member of an optional type."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [m for m in typing.get_args(hint) if m is not type(None)]
        if len(members) != 1:
            raise TypeError(f"a flag needs one value type, not {hint}")
        return members[0]
    if hint in (int, float, str, bool, Path):
        return hint
    raise TypeError(f"no flag type for {hint}: give the setting a parse function")


def _help(text: str, default: Any, options: Mapping[str, Any]) -> str:
    """The help text, argparse-escaped, with the default appended where it says something."""
    text = text.replace("%", "%%")
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    if options.get("required") or default is None or default is False or "default" in text:
        return text
    return f"{text} (default: {shown})"


def comma_separated(kind: type, name: str, minimum: float) -> Callable[[str], tuple]:
    """A parser of ``"0.4,0.2"`` into ``(0.4, 0.2)``, each value of ``kind`` and at least ``minimum``."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
        if any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"{name} must be at least {minimum:g}")
        return values

    parse.__name__ = name  # argparse names the type in its error message
    return parse


LEARNING_RATES = comma_separated(float, "learning rates", 0.0)
WIDTHS = comma_separated(int, "widths", 1)
