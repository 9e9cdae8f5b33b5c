"""Shared pieces of the networks' own config checks (:meth:`MetaNetwork.config_problems`).

A network config comes from a model file, which is untrusted input: each architecture says what
its config must hold, and how large its sizes may be, before anything is allocated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The most inner steps a recipe may ask for (MAML++'s per-step tensors have one more row).
MAX_STEPS = 100
#: The widest layer a stored config may ask for.
MAX_FILTERS = 1024


def is_int(value: Any, low: int, high: int) -> bool:
    """An int (not a bool) in ``[low, high]``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_flag(config: Mapping[str, Any], key: str) -> bool:
    """``config[key]`` is absent or a bool."""
    return isinstance(config.get(key, False), bool)


def key_problems(config: Mapping[str, Any], required: set[str], optional: set[str] = frozenset()) -> list[str]:
    """The architecture's complaint unless ``config`` holds exactly ``required`` (and any of ``optional``)."""
    if set(config) - optional == required | {"architecture"}:
        return []
    extra = f" (and optionally {', '.join(sorted(optional))})" if optional else ""
    return [f"{config.get('architecture')} needs exactly {', '.join(sorted(required))}{extra}"]


def step_count_problems(config: Mapping[str, Any]) -> list[str]:
    """MAML++'s per-step sizes (``norm_states``, ``lr_steps``), where present."""
    if all(is_int(config[key], 0, MAX_STEPS + 1) for key in {"norm_states", "lr_steps"} & set(config)):
        return []
    return [f"norm_states and lr_steps must be integers in [0, {MAX_STEPS + 1}]"]
