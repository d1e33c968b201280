"""Model runtimes: ONNX Runtime (CPU, or CUDA where present) and PyTorch (TorchScript, exported programs).

A runtime takes the encoded float32 matrix [rows, width] and returns scores [rows, k]. Each is
imported lazily: torch stays an optional extra and an agent serving nothing imports neither.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np


class RuntimeUnavailable(Exception):
    """The runtime this format needs is not installed on this agent."""


class Runtime(Protocol):
    def run(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class OnnxRuntime:
    session: object
    input_name: str
    output_name: str

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return out if out.ndim == 2 else out.reshape(len(x), -1)


class TorchRuntime:
    def __init__(self, module: object) -> None:
        import torch

        self._torch = torch
        self._module = module
        # TorchScript modules are thread-safe for inference; a lock keeps exported programs honest.
        self._lock = threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with self._lock, torch.inference_mode():
            out = self._module(torch.from_numpy(x))
        out = out.detach().cpu().numpy()
        return out if out.ndim == 2 else out.reshape(len(x), -1)


def load_onnx(path: Path, threads: int = 1) -> OnnxRuntime:
    """One session per model; one intra-op thread (requests are small; cores go to concurrency)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    return OnnxRuntime(sess, sess.get_inputs()[0].name, sess.get_outputs()[0].name)


def load_torch(path: Path, fmt: str) -> TorchRuntime:
    try:
        import torch
    except ImportError:
        raise RuntimeUnavailable("torch is not installed on this agent (pip install 'watchkeeper[torch]')") from None
    torch.set_num_threads(1)
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
        module.eval()
    else:
        module = torch.export.load(str(path)).module()
    return TorchRuntime(module)


def load_runtime(path: Path, fmt: str) -> Runtime:
    if fmt == "onnx":
        return load_onnx(path)
    if fmt in ("torchscript", "torch_export"):
        return load_torch(path, fmt)
    raise RuntimeUnavailable(f"unknown model format {fmt!r}")
