"""The model menu: plain names for people ("Photos", "Handwriting", "Text"), the technical ones in a details line.

A model's kind follows from its input: colour models are for photos (the page offers the camera),
grayscale ones for handwriting (it offers the sketchpad), text models for texts (a box of lines per
class instead of images). The first model of a kind gets the plain name; any further one adds its
file name, "Photos (photos-resnet12)".
"""

from __future__ import annotations

from collections.abc import Mapping

from ..api import FewShotModel

PHOTOS, HANDWRITING, TEXT = "Photos", "Handwriting", "Text"
#: The extra input tabs each kind shows (uploads always show for images); "Show every input" shows both.
INPUTS_FOR_KIND = {PHOTOS: ("camera",), HANDWRITING: ("draw",), TEXT: ()}


def kind_of(model: FewShotModel) -> str:
    if model.takes_text:
        return TEXT
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
    recipe = model.recipe
    if model.takes_text:
        architecture = f"{recipe.network['layers']}-layer bert"
        reads = f"reads the first {model.preprocessing.max_length} tokens of a text"
    else:
        size, colour = model.preprocessing.image_size, "colour" if model.preprocessing.channels == 3 else "grayscale"
        members = recipe.network.get("members")
        architecture = f"ensemble of {len(members)} resnet12" if members else recipe.network["architecture"]
        reads = f"{size}×{size} {colour} input"
    steps = recipe.test_steps
    return (f"`{name}`: `{recipe.algorithm}` {architecture} meta-trained on {recipe.dataset}, "
            f"{reads}; adapts in {steps} gradient step{'s' if steps != 1 else ''}.")
