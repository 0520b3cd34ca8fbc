"""ONNX backend for ViTPose and HMR2: GEM's published exports (``vitpose_coco17.onnx``, ``hmr2.onnx``) or our
own (:func:`export_onnx`) run with onnxruntime behind the torch models' call signature.

Signature of both the published files and our exports (as GEM's ``tools/export``): one input ``imgs``
float32 (B, 3, 256, 192) for ViTPose / (B, 3, 256, 256) for HMR2, one output ``heatmaps`` (B, 17, 64, 48) /
``f_imgseq`` (B, 1024), dynamic batch axis named ``B``, opset 18. Flip test and decoding stay outside.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxModel", "export_onnx", "onnx_signature"]

log = logging.getLogger(__name__)
OPSET = 18
INPUT_NAME = "imgs"


def onnx_signature(model: nn.Module) -> tuple[str, tuple[int, int, int, int]]:
    """(output name, example input shape) of a :class:`.vitpose.ViTPose` or :class:`.hmr2.HMR2`."""
    from .hmr2 import HMR2
    from .vitpose import ViTPose

    if isinstance(model, ViTPose):
        return "heatmaps", (2, 3, 256, 192)
    if isinstance(model, HMR2):
        return "f_imgseq", (2, 3, 256, 256)
    raise TypeError(f"no ONNX signature for {type(model).__name__}")


class _ImgsOnly(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.model(imgs)


def export_onnx(model: nn.Module, path: str | Path, opset: int = OPSET) -> Path:
    """Export a ViTPose or HMR2 in fp32 with GEM's signature (batch 2 example, dynamic ``B``). Weights go to a
    ``<file>.data`` sidecar only when the model is too large for a single protobuf (> ~2 GB)."""
    output_name, shape = onnx_signature(model)
    param = next(model.parameters())
    example = torch.zeros(shape, dtype=torch.float32, device=param.device)
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.5e9
    bf16, model.bf16 = model.bf16, False
    try:
        with torch.no_grad():
            torch.onnx.export(
                _ImgsOnly(model).eval(),
                (example,),
                str(path),
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[output_name],
                dynamic_shapes={"imgs": {0: torch.export.Dim("B")}},
                external_data=large,
                verbose=False,
            )
    finally:
        model.bf16 = bf16
    return Path(path)


class OnnxModel:
    """An onnxruntime session callable like our torch models: ``model(imgs) -> tensor`` on ``imgs.device``.

    ``device="cuda"`` uses the CUDA execution provider when onnxruntime has it (CUDA tensors are then bound
    in place, without copies through the host); otherwise the CPU provider with ``threads`` intra-op threads.
    """

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        providers: list = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": torch.device(device).index or 0}))
            else:
                log.warning("%s: onnxruntime has no CUDA provider here; running on the CPU", path.name)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{path}: expected one input and one output, got {len(inputs)} / {len(outputs)}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_shape, self.output_shape = inputs[0].shape, outputs[0].shape
        self.on_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"

    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        imgs = imgs.float().contiguous()
        if self.on_cuda and imgs.is_cuda:
            return self._run_bound(imgs)
        feed = {self.input_name: imgs.detach().cpu().numpy()}
        out = self.session.run([self.output_name], feed)[0]
        return torch.from_numpy(np.ascontiguousarray(out)).to(imgs.device)

    def _run_bound(self, imgs: torch.Tensor) -> torch.Tensor:
        shape = [imgs.shape[0], *(int(d) for d in self.output_shape[1:])]
        out = torch.empty(shape, dtype=torch.float32, device=imgs.device)
        binding = self.session.io_binding()
        idx = imgs.device.index or 0
        binding.bind_input(self.input_name, "cuda", idx, np.float32, list(imgs.shape), imgs.data_ptr())
        binding.bind_output(self.output_name, "cuda", idx, np.float32, shape, out.data_ptr())
        torch.cuda.current_stream(imgs.device).synchronize()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out

    def eval(self) -> OnnxModel:
        """No-op, so stage code can treat both backends alike."""
        return self
