"""Person detection with an ultralytics YOLO model, batched over decoded chunks.

Only detection lives here; identities come from ``stages.tracking``, which runs ultralytics' tracker on these
detections at the real frame rate (``YOLO.track()`` would fix the lost window in frames and couple tracking to
the predictor).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stages.spec import not_in_key

PERSON_CLASS = 0  # COCO class id of "person"


def configure_ultralytics() -> None:
    """Environment read by ultralytics when it is first imported: no runtime pip installs, no downloads of
    its own (our registry resolves weight files), no telemetry; its settings file goes to our cache instead
    of ~/.config. Call before importing ultralytics; values already set by the user win."""
    for k, v in {
        "YOLO_AUTOINSTALL": "false",
        "YOLO_OFFLINE": "true",
        "YOLO_VERBOSE": "false",
        "YOLO_CONFIG_DIR": str(
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genmocap" / "ultralytics"
        ),
    }.items():
        os.environ.setdefault(k, v)


configure_ultralytics()


class DetectorSettings(BaseModel):
    """Detector options. ``weights`` and ``batch`` do not change results and are left out of cache keys
    (the weight file's hash is in the key instead)."""

    model_config = ConfigDict(extra="forbid")

    weights: str = not_in_key(
        "yolov8x.pt",
        description="registry file name (yolov8x.pt, yolo11x.pt, ...), a path to any ultralytics weight "
        "file, or an ultralytics model yaml (random weights: smoke tests only)",
    )
    conf: float = Field(0.1, ge=0.0, le=1.0, description="lowest score kept; the tracker sorts high/low")
    iou: float = Field(0.7, gt=0.0, le=1.0, description="NMS IoU")
    imgsz: int = Field(640, ge=32, description="letterbox size (multiple of 32)")
    max_det: int = Field(100, ge=1)
    half: bool = Field(True, description="fp16 on CUDA (ignored on CPU)")
    batch: int = not_in_key(16, ge=1, description="frames per forward pass")


class PersonDetector:
    """A YOLO model loaded once and shared by every clip of the process.

    ``predict`` is serialised with a lock: ultralytics predictors keep per-call state and are not
    thread-safe, and clips may run in parallel threads.
    """

    def __init__(self, weights: Path, device: str, settings: DetectorSettings, seed: int = 0):
        import torch
        from ultralytics import YOLO

        if str(weights).endswith((".yaml", ".yml")):
            torch.manual_seed(seed)  # random init from a model yaml: make it reproducible
        self.model = YOLO(str(weights), task="detect")
        self.device = device
        self.settings = settings
        self._lock = threading.Lock()

    def __call__(self, frames_rgb: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Detect people.

        Args:
            frames_rgb: (N, H, W, 3) uint8 RGB frames.
        Returns:
            N pairs ``(xyxy (K,4) float32 pixels, scores (K,) float32)``, one per frame.
        """
        s = self.settings
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for start in range(0, len(frames_rgb), s.batch):
            # ultralytics takes numpy images as BGR.
            batch = [np.ascontiguousarray(f[..., ::-1]) for f in frames_rgb[start : start + s.batch]]
            with self._lock:
                results = self.model.predict(
                    batch,
                    classes=[PERSON_CLASS],
                    conf=s.conf,
                    iou=s.iou,
                    imgsz=s.imgsz,
                    max_det=s.max_det,
                    half=s.half and self.device.startswith("cuda"),
                    device=self.device,
                    verbose=False,
                )
            for r in results:
                boxes = r.boxes
                out.append(
                    (
                        boxes.xyxy.cpu().numpy().astype(np.float32).reshape(-1, 4),
                        boxes.conf.cpu().numpy().astype(np.float32).reshape(-1),
                    )
                )
        return out
