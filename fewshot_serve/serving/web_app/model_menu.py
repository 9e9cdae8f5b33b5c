"""The model menu: plain names for people ("Photos", "Handwriting"), the technical ones in a details line.

A model's kind follows from its input: colour models are for photos (the page offers the camera),
grayscale ones for handwriting (it offers the sketchpad). The first model of a kind gets the plain
name; any further one adds its file name, "Photos (photos-resnet12)".
"""

from __future__ import annotations

from collections.abc import Mapping

from ..api import FewShotModel

PHOTOS, HANDWRITING = "Photos", "Handwriting"
#: The extra input tabs each kind shows (uploads always show); "Show every input" shows both.
INPUTS_FOR_KIND = {PHOTOS: ("camera",), HANDWRITING: ("draw",)}


def kind_of(model: FewShotModel) -> str:
    return PHOTOS if model.preprocessing.channels == 3 else HANDWRITING


def menu_choices(models: Mapping[str, FewShotModel]) -> list[tuple[str, str]]:
    """``(label, file stem)`` pairs for ``gr.Dropdown``, in the order served."""
    choices, used = [], set()
    for stem, model in models.items():
        kind = kind_of(model)
        choices.append((kind if kind not in used else f"{kind} ({stem})", stem))
        used.add(kind)
    return choices


def describe(name: str, model: FewShotModel) -> str:
    """The details line: what a model was meta-trained on and how it adapts."""
    recipe, size = model.recipe, model.preprocessing.image_size
    colour = "colour" if model.preprocessing.channels == 3 else "grayscale"
    members = recipe.network.get("members")
    architecture = f"ensemble of {len(members)} resnet12" if members else recipe.network["architecture"]
    steps = recipe.test_steps
    return (f"`{name}`: `{recipe.algorithm}` {architecture} meta-trained on {recipe.dataset}, "
            f"{size}×{size} {colour} input; adapts in {steps} gradient step{'s' if steps != 1 else ''}.")
