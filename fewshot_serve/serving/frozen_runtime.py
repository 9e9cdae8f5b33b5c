"""The layers the inner loop leaves alone, run by onnxruntime: where a request spends its time.

With a head-only inner loop the frozen part is the whole backbone, and on a CPU it is nearly all
of a request's cost (EfficientNet-Lite0: 25 support and 75 query images at 224x224). onnxruntime
runs that same network 2.4-3.2x faster than torch in float32 on the 2-core machine the latencies
are measured on (``benchmarks/frozen_part_runtimes.py``), with features equal within 1e-5, so the
inner loop and the head still see what meta-training computed.

Exporting takes seconds (13 s for EfficientNet-Lite0 here), so the exported network is cached on
disk under the model file's sha256 and the torch version: a model is exported once per machine.
The cache folder is ``$FEWSHOT_SERVE_CACHE`` (``off`` to keep it in memory only), else
``~/.cache/fewshot-serve``. A cache entry that onnxruntime cannot open is exported again.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..files.atomic import atomic_output
from ..networks import MetaNetwork

CACHE_VARIABLE = "FEWSHOT_SERVE_CACHE"
#: bump when what is exported changes, so old cache entries are not reused
CACHE_FORMAT = 1


class FrozenPart(nn.Module):
    """``network.frozen_part`` at fixed parameters, as a module of the images alone (for export)."""

    def __init__(self, network: MetaNetwork, params: dict[str, Tensor]) -> None:
        super().__init__()
        self.network, self.params = network, {name: value.detach() for name, value in params.items()}

    def forward(self, x: Tensor) -> Tensor:
        return self.network.frozen_part(self.params, x)


class OnnxFrozenPart:
    """``network.frozen_part(params, x)`` computed by an onnxruntime session (CPU, float32)."""

    def __init__(self, network: MetaNetwork, params: dict[str, Tensor], example: Tensor, model_sha256: str) -> None:
        import onnxruntime

        self._options = onnxruntime.SessionOptions()
        self._options.intra_op_num_threads = torch.get_num_threads()
        name = f"frozen-part-{model_sha256[:32]}-torch{torch.__version__}-v{CACHE_FORMAT}.onnx"
        folder = cache_folder()
        self.session = self._cached_session(folder / name) if folder else None
        if self.session is None:
            serialized = export_frozen_part(network, params, example)
            if folder:
                with atomic_output(folder / name) as temporary:
                    temporary.write_bytes(serialized)
            self.session = onnxruntime.InferenceSession(serialized, self._options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def _cached_session(self, path: Path):
        import onnxruntime

        if not path.exists():
            return None
        try:
            return onnxruntime.InferenceSession(str(path), self._options, providers=["CPUExecutionProvider"])
        except Exception:  # a damaged or foreign entry: export again and replace it
            return None

    def __call__(self, x: Tensor) -> Tensor:
        """Preprocessed float images ``[n, C, S, S]`` (CPU) -> the frozen part's output, as a torch tensor."""
        images = x.detach().to(torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: images})[0])


def export_frozen_part(network: MetaNetwork, params: dict[str, Tensor], example: Tensor) -> bytes:
    """The serialized ONNX model of ``network.frozen_part`` at ``params``."""
    from .onnx_export import onnx_model

    return onnx_model(FrozenPart(network, params).eval(), example, output_name="frozen_part").SerializeToString()


def cache_folder() -> Path | None:
    """Where exported frozen parts are kept (None: ``$FEWSHOT_SERVE_CACHE`` is ``off``)."""
    setting = os.environ.get(CACHE_VARIABLE)
    if setting == "off":
        return None
    return Path(setting) if setting else Path.home() / ".cache" / "fewshot-serve"

