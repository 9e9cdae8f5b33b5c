"""How a model file stores its weights: float32, float16, or int8 with a scale per output channel.

Serving always computes in float32; storage only decides the download. float16 halves a file and
rounds each weight by at most 2^-11 of itself. int8 quarters the weight matrices and kernels (the
tensors of two or more dimensions, nearly all of a network's weights): each output channel (row)
``w`` is stored as ``round(w / s)`` in [-127, 127] with ``s = max|w| / 127`` beside it as
``<name>.int8_scale`` (float32), so every weight moves by at most half a step, ``max|w| / 254``,
of its own channel's largest. Biases, norm affines, learning rates and the like (vectors) stay
float32 there: they are few, and some (learned learning rates) are not centred on zero. What either
does to accuracy is measured per model (models/cards/).

A file is untrusted input: :func:`decode` checks every stored tensor's name, dtype, shape and
finiteness against the network the recipe builds and says which tensor is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

#: How a file may store its weights, by name (the CLI's ``store --dtype``).
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int8": torch.int8}
#: The suffix of an int8 tensor's per-channel scales.
SCALE_SUFFIX = ".int8_scale"
#: safetensors' header names of the dtypes :func:`encode` writes.
_HEADER_DTYPES = {"F32": torch.float32, "F16": torch.float16, "I8": torch.int8}
_INT8_MAX = 127


def encode(params: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors to write for ``params`` stored as ``dtype`` (CPU, contiguous).

    Raises ``ValueError`` naming a weight that does not fit (beyond float16's 65,504, NaN, infinite)
    rather than storing it as infinity.
    """
    if dtype not in STORAGE_DTYPES.values():
        raise ValueError(f"weights are stored as one of {sorted(STORAGE_DTYPES)}, not {dtype}")
    stored: dict[str, torch.Tensor] = {}
    for name, value in params.items():
        value = value.detach().to("cpu", torch.float32)
        if not torch.isfinite(value).all():
            raise ValueError(f"tensor {name!r} holds NaN or infinite values")
        if dtype == torch.int8 and value.dim() >= 2:
            stored[name], stored[name + SCALE_SUFFIX] = _quantize_rows(value)
            continue
        kept = value.to(torch.float32 if dtype == torch.int8 else dtype).contiguous()
        if not torch.isfinite(kept).all():
            raise ValueError(f"tensor {name!r} does not fit {dtype}")
        stored[name] = kept
    return stored


def decode(stored: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
    """The float32 weights of ``stored`` tensors, checked against the network's ``shapes``.

    Raises ``ValueError`` for a missing or unexpected tensor, a non-floating weight (other than
    int8 with its scales), a wrong shape, or a NaN or infinite value.
    """
    quantized = {name for name, tensor in stored.items() if tensor.dtype == torch.int8}
    expected = set(shapes) | {name + SCALE_SUFFIX for name in quantized}
    missing, extra = sorted(expected - set(stored)), sorted(set(stored) - expected)
    if missing or extra:
        parts = [f"missing tensors {missing}"] if missing else []
        parts += [f"unexpected tensors {extra}"] if extra else []
        raise ValueError("; ".join(parts))
    weights = {}
    for name in sorted(shapes):
        tensor, shape = stored[name], shapes[name]
        if name in quantized:
            weights[name] = _dequantize_rows(name, tensor, stored[name + SCALE_SUFFIX], shape)
            continue
        _check_float(name, tensor, shape)
        weights[name] = tensor.float()
    return weights


def storage_dtype(header_dtypes: Iterable[str]) -> torch.dtype:
    """How a file stores its weights (what :func:`encode` was given), from its tensors' dtypes as
    safetensors' header names them ("F32", "I8", ...), so that no weight need be read.

    A dtype :func:`encode` does not write (a file made elsewhere, in bfloat16 say) counts as
    float32, the storage that keeps any of them exactly.
    """
    dtypes = [_HEADER_DTYPES.get(name, torch.float32) for name in header_dtypes]
    if torch.int8 in dtypes:
        return torch.int8
    return next(iter(dtypes), torch.float32)


def _quantize_rows(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = value.reshape(value.shape[0], -1)
    scale = rows.abs().amax(dim=1) / _INT8_MAX
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale)).unsqueeze(1)  # an all-zero row stays zero
    codes = torch.round(rows / divisor).clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return codes.reshape(value.shape).contiguous(), scale.contiguous()


def _dequantize_rows(name: str, codes: torch.Tensor, scale: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if codes.shape != shape or len(shape) < 2:
        raise ValueError(f"tensor {name!r} has shape {tuple(codes.shape)}, expected {tuple(shape)}"
                         + ("" if len(shape) >= 2 else " (only tensors of two or more dimensions are stored as int8)"))
    _check_float(name + SCALE_SUFFIX, scale, torch.Size([shape[0]]))
    if (scale < 0).any():
        raise ValueError(f"tensor {name + SCALE_SUFFIX!r} holds negative scales")
    return codes.float() * scale.float().reshape(-1, *[1] * (len(shape) - 1))


def _check_float(name: str, tensor: torch.Tensor, shape: torch.Size) -> None:
    if not tensor.is_floating_point():
        raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}; weights must be floating point")
    if tensor.shape != shape:
        raise ValueError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"tensor {name!r} holds NaN or infinite values")
