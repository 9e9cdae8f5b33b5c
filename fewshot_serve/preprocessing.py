"""Turning any image into the network's input, identically for training data and served uploads.

A :class:`Preprocessing` is part of a model file's recipe. Training decodes each dataset image
once through :meth:`Preprocessing.to_uint8` and keeps the result; serving sends every upload
through the same method, so the pixels a served model sees are made exactly as in training.
This module needs only numpy and Pillow, so the ONNX runtime path works without torch.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps

#: Anything :func:`open_image` accepts.
ImageLike = Union[Image.Image, str, os.PathLike, bytes, np.ndarray]  # noqa: UP007 (a runtime alias: 3.10 needs Union)

#: A Python object's default repr, "<_io.BytesIO object at 0x7f...>": internal detail, not for messages.
OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")

#: Uploads larger than this many pixels are refused (PIL's own guard is only a warning at 89 MP).
MAX_IMAGE_PIXELS = 40_000_000


class ImageError(ValueError):
    """An input that is not a usable image; the message says which and why."""


def open_image(image: ImageLike, name: str = "image") -> Image.Image:
    """Decode ``image`` into an upright PIL image, or raise :class:`ImageError` saying why not.

    Accepts a PIL image, a file path, encoded bytes, or a uint8 array (H×W or H×W×C). Decoding
    is forced here, so a truncated file fails now rather than half-way through a request.
    """
    if isinstance(image, Image.Image):
        pil = image
    elif isinstance(image, np.ndarray):
        pil = _array_to_image(image, name)
    elif isinstance(image, (bytes, bytearray)):
        pil = _decode(io.BytesIO(image), name)
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"{name}: no such file {str(path)!r}")
        with path.open("rb") as handle:
            pil = _decode(io.BytesIO(handle.read()), f"{name} ({path.name})")
    else:
        raise ImageError(f"{name}: expected a PIL image, a path, bytes or a uint8 array, got {type(image).__name__}")
    if pil.width < 1 or pil.height < 1:
        raise ImageError(f"{name}: the image is empty")
    return ImageOps.exif_transpose(pil)


def _decode(stream: io.BytesIO, name: str) -> Image.Image:
    if stream.getbuffer().nbytes == 0:
        raise ImageError(f"{name}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            pil = Image.open(stream)
            if pil.width * pil.height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"{name}: {pil.width}x{pil.height} pixels is more than the {MAX_IMAGE_PIXELS:,} allowed"
                )
            pil.load()  # first frame only, for animated formats
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{name}: refused as a decompression bomb ({error})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image (not a known image format)") from None
    except Exception as error:  # PIL raises many types for corrupt data
        detail = OBJECT_REPR.sub("the data", str(error))  # no "<_io.BytesIO object at 0x...>" in messages
        raise ImageError(f"{name}: not a readable image ({type(error).__name__}: {detail})") from None
    return pil


def _array_to_image(array: np.ndarray, name: str) -> Image.Image:
    if array.dtype != np.uint8:
        raise ImageError(f"{name}: arrays must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: arrays must be HxW or HxWx{{1,3,4}}, got shape {array.shape}")
    if array.shape[0] * array.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageError(f"{name}: {array.shape[1]}x{array.shape[0]} pixels is more than allowed")
    return Image.fromarray(np.ascontiguousarray(array))


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become network input; stored in the model file's recipe.

    ``channels`` 1 means grayscale. ``invert`` flips intensities after grayscale conversion
    (Omniglot is trained as bright ink on a dark background). ``fit`` is ``"pad"`` (pad to a
    square with the paper colour, keeping the aspect ratio: right for drawings) or ``"squash"``.
    ``mean``/``std`` standardize the [0, 1] intensities per channel.
    """

    image_size: int
    channels: int
    invert: bool
    fit: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not 8 <= self.image_size <= 512:
            raise ValueError(f"image_size must be in [8, 512], got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.fit not in ("pad", "squash"):
            raise ValueError(f"fit must be 'pad' or 'squash', got {self.fit!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one entry per channel")
        if not all(s > 0 for s in self.std) or not all(np.isfinite(self.mean)):
            raise ValueError("std must be positive and mean finite")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (lists, not tuples), as stored in a recipe."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        fields = dict(data)
        fields["mean"] = tuple(float(v) for v in fields["mean"])
        fields["std"] = tuple(float(v) for v in fields["std"])
        return cls(**fields)

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """Colour-convert, fit and resize one decoded image to a ``[C, S, S]`` uint8 array."""
        pil = _flatten_onto_paper(image)
        pil = pil.convert("L" if self.channels == 1 else "RGB")
        if self.fit == "pad" and pil.width != pil.height:
            side = max(pil.width, pil.height)
            pil = ImageOps.pad(pil, (side, side), color=255 if self.channels == 1 else (255, 255, 255))
        if pil.size != (self.image_size, self.image_size):
            pil = pil.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)
        array = np.asarray(pil, dtype=np.uint8)
        if self.invert:
            array = 255 - array
        return np.array(array[None] if self.channels == 1 else array.transpose(2, 0, 1), order="C")  # writable copy

    def normalize(self, images):
        """uint8 ``[..., C, S, S]`` (torch tensor or numpy array) -> standardized float32."""
        shape = (-1, 1, 1)
        if isinstance(images, np.ndarray):
            mean = np.asarray(self.mean, dtype=np.float32).reshape(shape)
            std = np.asarray(self.std, dtype=np.float32).reshape(shape)
            return (images.astype(np.float32) / 255.0 - mean) / std
        import torch

        mean = torch.tensor(self.mean, device=images.device).view(shape)
        std = torch.tensor(self.std, device=images.device).view(shape)
        return (images.float() / 255.0 - mean) / std


def _flatten_onto_paper(image: Image.Image) -> Image.Image:
    """Make transparent pixels white paper and bring odd modes (P, 1, CMYK, I;16, ...) to RGB/L."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        return Image.fromarray(np.clip(array * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode not in ("L", "RGB"):
        return image.convert("RGB")
    return image
