"""Parity tool: ``python -m tools.perception_parity DIR`` compares our perception code with the golden
tensors of a perception-parity fixture directory (boxes, crops, ViTPose network, heatmaps, decode,
keypoints, HMR2 taps and features: ``boxes.pt``, ``decode.pt``, ``vitpose.pt``, ``hmr2.pt``, with
``frames.pt``, one ``*.pth`` and one ``*.ckpt`` checkpoint and ``manifest.json``) and prints, per file and
group, the max abs error and PASS/FAIL against the tolerances published with the fixture set (the ``TOL_*``
constants). Exit status 0 only if every key passes; ``-v`` lists every key.

Networks and decode are teacher-forced (fed the stored crops / heatmaps); ``e2e/*`` runs our own crops
through everything. Boxes follow GEM's demo rule (:func:`gem_demo_boxes`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from models.crops import blur_decision, crop_matrices, cut_crops, square_boxes
from models.heatmap import decode_details
from models.hmr2 import load_hmr2
from models.vitpose import heatmaps_flip_test, load_vitpose
from stages.tracking import bbx_xys_from_xyxy, moving_average

Row = tuple[str, float, float, bool]  # key, max abs error (mismatch count for integers/booleans), tol, passed

# ---- tolerances published with the fixture set ------------------------------------------------------------
TOL_BOX_SMOOTHED = 1e-3  # px
TOL_CROP = 1.0 / 255 / 0.222  # one uint8 level after normalisation (ours are bitwise: error 0 expected)
TOL_NET = 1e-4  # network taps fed the stored crops
TOL_XY = 1e-3  # px, decode fed the stored heatmaps / end to end with bitwise crops
TOL_CONF = 1e-6  # decode fed the stored heatmaps
TOL_CONF_E2E = 1e-5  # end to end with bitwise crops
TOL_FEATURE_LOOSE = 2e-2  # HMR2 feature end to end without bitwise crops
MARGIN_MIN = 0.05  # without bitwise crops: joints with a smaller peak/neighbour gap are not compared
TOL_HM_PX = 0.25  # without bitwise crops: allowed move of the others, in heatmap pixels


def gem_demo_boxes(det: torch.Tensor, det_count: torch.Tensor, width: int, height: int) -> dict:
    """GEM demo's box pipeline after detection (``detect_and_track``): per frame the largest-area detection
    (float64 area of the unclamped box, first on ties, confidence ignored), frames without one repeat the
    previous box (before any: the centred half-size box), clamp to the image in float32, GEM's square with
    enlarge 1.2, window-5 moving average."""
    rows = det.double().numpy()
    prev = np.array([width / 4, height / 4, 3 * width / 4, 3 * height / 4])  # before the first detection
    index, chosen, start = [], [], 0
    for n in det_count.tolist():
        if n == 0:
            box = prev.copy()
            index.append(-1)
        else:
            b = rows[start : start + n]
            j = int(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).argmax())
            box = b[j, :4]
            index.append(j)
        chosen.append(box)
        prev, start = box, start + n
    selected = torch.from_numpy(np.stack(chosen))
    clamped = selected.float()
    clamped[:, 0::2] = clamped[:, 0::2].clamp(0, width - 1)
    clamped[:, 1::2] = clamped[:, 1::2].clamp(0, height - 1)
    square = square_boxes(clamped)
    return {
        "selected_index": torch.tensor(index),
        "selected_xyxy": selected,
        "xyxy_clamped": clamped,
        "bbx_xys_unsmoothed": square,
        "bbx_xys": torch.from_numpy(moving_average(square.numpy(), 5)),
    }


def compare(key: str, mine: torch.Tensor, ref: torch.Tensor, tol: float) -> Row:
    mine = torch.as_tensor(mine).detach().cpu()
    if tuple(mine.shape) != tuple(ref.shape):
        return key, float("inf"), tol, False
    if ref.dtype == torch.bool or not ref.is_floating_point():
        err = float((mine != ref).sum())
    else:
        err = float((mine.double() - ref.double()).abs().max()) if ref.numel() else 0.0
    return key, err, tol, err <= tol


def check_boxes(fx: dict) -> list[Row]:
    rows: list[Row] = []
    for sc in sorted({k.split("/")[0] for k in fx if k.startswith("B")}):
        width, height = fx[f"{sc}/image_wh"].tolist()
        mine = gem_demo_boxes(fx[f"{sc}/det"], fx[f"{sc}/det_count"], width, height)
        for name, value in mine.items():
            tol = TOL_BOX_SMOOTHED if name == "bbx_xys" else 0.0
            rows.append(compare(f"boxes/{sc}/{name}", value, fx[f"{sc}/{name}"], tol))
    return rows


def pipeline_square_info(fx: dict) -> float:
    """Max |Δ| of the pipeline's box rule ``stages.tracking.bbx_xys_from_xyxy`` vs the reference's square."""
    err = 0.0
    for sc in {k.split("/")[0] for k in fx if k.startswith("B")}:
        ours = bbx_xys_from_xyxy(fx[f"{sc}/xyxy_clamped"].numpy())
        err = max([err, *np.abs(ours - fx[f"{sc}/bbx_xys_unsmoothed"].numpy()).ravel().tolist()])
    return err


def _crops(fx: dict, frames: dict, device: str):
    """Our crops of all items, cut per frame (frames differ in size): (vitpose, hmr2, hmr2_blurred)."""
    idx, boxes = fx["input/frame_index"], fx["input/bbx_xys"]
    n = len(boxes)
    vit, hmr = torch.zeros(n, 3, 256, 192), torch.zeros(n, 3, 256, 256)
    blur = torch.zeros(n, dtype=torch.bool)
    for f in idx.unique().tolist():
        sel = (idx == f).nonzero()[:, 0]
        frame = frames[f"frame/{f}"].to(device)[None]
        c = cut_crops(frame, torch.zeros(len(sel), dtype=torch.long), boxes[sel])
        vit[sel], hmr[sel], blur[sel] = c.vitpose.cpu(), c.hmr2.cpu(), c.hmr2_blurred.cpu()
    return vit, hmr, blur


def check_vitpose(fx: dict, frames: dict, model, device: str) -> list[Row]:
    boxes = fx["input/bbx_xys"]
    vit, _, _ = _crops(fx, frames, device)
    rows = [compare("crop/affine", crop_matrices(boxes), fx["crop/affine"], 0.0)]
    rows.append(compare("crop/img", vit, fx["crop/img"], TOL_CROP))
    with torch.no_grad():
        stored = fx["crop/img"].to(device)
        rows.append(compare("net/backbone", model.backbone(stored), fx["net/backbone"], TOL_NET))
        avg, normal, back = heatmaps_flip_test(model, stored)
        for name, value in (("normal", normal), ("flip_back", back), ("avg", avg)):
            rows.append(compare(f"heatmap/{name}", value, fx[f"heatmap/{name}"], TOL_NET))
        rows += _decode_rows(fx["heatmap/avg"], boxes, fx)
        e2e = decode_details(heatmaps_flip_test(model, vit.to(device))[0], boxes).kp2d.cpu()
    if torch.equal(vit, fx["crop/img"]):
        rows.append(compare("e2e/kp2d_xy", e2e[..., :2], fx["kp2d"][..., :2], TOL_XY))
        rows.append(compare("e2e/kp2d_conf", e2e[..., 2], fx["kp2d"][..., 2], TOL_CONF_E2E))
    else:  # the fixture set's rule: skip ill-conditioned joints, hold the rest to a quarter heatmap pixel
        margin, s = fx["decode/margin"], boxes[:, 2:3]
        gaps_ok = (margin[..., 1:] < 0) | (margin[..., 1:] >= MARGIN_MIN)  # -1 = no step on that axis
        steady = (margin[..., 0] >= MARGIN_MIN) & gaps_ok.all(-1)
        tol = torch.stack([TOL_HM_PX * 0.75 * s / 48, TOL_HM_PX * s / 64], -1).expand_as(e2e[..., :2])
        ratio = ((e2e[..., :2] - fx["kp2d"][..., :2]).abs() / tol)[steady]
        worst = float(ratio.max()) if ratio.numel() else 0.0
        rows.append(("e2e/kp2d_xy_over_quarter_px", worst, 1.0, worst <= 1.0))
    return rows


def _decode_rows(heatmaps: torch.Tensor, boxes: torch.Tensor, fx: dict) -> list[Row]:
    d = decode_details(heatmaps, boxes)
    return [
        compare("decode/argmax", d.argmax, fx["decode/argmax"], 0),
        compare("decode/hm_xy", d.hm_xy, fx["decode/hm_xy"], 0.0),
        compare("decode/maxval_raw", d.maxval, fx["decode/maxval_raw"], 0.0),
        compare("kp2d/xy", d.kp2d[..., :2], fx["kp2d"][..., :2], TOL_XY),
        compare("kp2d/conf", d.kp2d[..., 2], fx["kp2d"][..., 2], TOL_CONF),
    ]


def check_hmr2(fx: dict, frames: dict, model, device: str) -> list[Row]:
    boxes = fx["input/bbx_xys"]
    _, hmr, blurred = _crops(fx, frames, device)
    ds, decision = blur_decision(boxes)
    rows = [
        compare("crop/ds_factor", ds, fx["crop/ds_factor"], 0.0),
        compare("crop/blurred", decision, fx["crop/blurred"], 0),
        compare("crop/blurred_used", blurred, fx["crop/blurred"], 0),
        compare("crop/affine", crop_matrices(boxes), fx["crop/affine"], 0.0),
        compare("crop/img", hmr, fx["crop/img"], TOL_CROP),
    ]
    with torch.no_grad():
        taps: dict[str, torch.Tensor] = {}
        feature = model(fx["crop/img"].to(device), taps)
        rows += [compare(k, taps[k.split("/", 1)[1]], fx[k], TOL_NET) for k in fx if k.startswith("net/")]
        rows.append(compare("feature", feature, fx["feature"], TOL_NET))
        e2e = model(hmr.to(device))
    tol = TOL_NET if torch.equal(hmr, fx["crop/img"]) else TOL_FEATURE_LOOSE
    rows.append(compare("e2e/feature", e2e, fx["feature"], tol))
    return rows


def _heads(folder: Path) -> dict:
    manifest = folder / "manifest.json"
    reduced = json.loads(manifest.read_text()).get("reduced", {}) if manifest.is_file() else {}
    return {
        "vit": reduced.get("vit", {}).get("num_heads"),
        "decoder": reduced.get("hmr2_decoder", {}).get("heads"),
    }


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"parity: expected one {pattern} in {folder}, found {[p.name for p in found]}")
    return found[0]


def run(folder: Path, device: str = "cpu", verbose: bool = False) -> bool:
    if device.startswith("cuda"):  # fp32 parity: no TF32 in matmuls or convolutions
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    heads = _heads(folder)
    load = lambda p: torch.load(folder / p, map_location="cpu", weights_only=True)  # noqa: E731
    checks = {"boxes.pt": None, "decode.pt": None, "vitpose.pt": None, "hmr2.pt": None}
    present = [name for name in checks if (folder / name).is_file()]
    if not present:
        raise SystemExit(f"parity: no fixture files in {folder}")
    frames = load("frames.pt") if {"vitpose.pt", "hmr2.pt"} & set(present) else None
    all_ok = True
    for name in present:
        fx = load(name)
        if name == "boxes.pt":
            rows = check_boxes(fx)
        elif name == "decode.pt":
            rows = _decode_rows(fx["input/heatmaps"], fx["input/bbx_xys"], fx)
        elif name == "vitpose.pt":
            model = load_vitpose(_one(folder, "*.pth"), device, num_heads=heads["vit"])
            rows = check_vitpose(fx, frames, model, device)
        else:
            ckpt = _one(folder, "*.ckpt")
            model = load_hmr2(ckpt, device, num_heads=heads["vit"], decoder_heads=heads["decoder"])
            rows = check_hmr2(fx, frames, model, device)
        print(name)
        groups: dict[str, list[Row]] = {}
        for row in rows:
            groups.setdefault(row[0].split("/", 1)[0], []).append(row)
        for group, grows in groups.items():
            err, ok = max(r[1] for r in grows), all(r[3] for r in grows)
            print(f"  {group:<8} {len(grows):>3} keys  max|err| {err:9.2e}  {'PASS' if ok else 'FAIL'}")
            for key, e, tol, good in grows if verbose or not ok else ():
                print(f"    {key:<40} {e:9.2e} <= {tol:8.1e}  {'ok' if good else 'FAIL'}")
        if name == "boxes.pt":
            print(
                f"  (info: stages.tracking.bbx_xys_from_xyxy vs reference square: max|err| "
                f"{pipeline_square_info(fx):.2e}, the tracker's boxes)"
            )
        all_ok &= all(r[3] for r in rows)
    print("ALL PASS" if all_ok else "SOME FAIL")
    return all_ok


def main(argv: list[str] | None = None) -> int:
    prog, doc = "python -m tools.perception_parity", __doc__.splitlines()[0]
    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument("folder", type=Path, help="fixture directory (.pt files, checkpoints, manifest.json)")
    p.add_argument("--device", default="cpu", help="torch device to run on (default cpu)")
    p.add_argument("-v", "--verbose", action="store_true", help="list every key")
    args = p.parse_args(argv)
    return 0 if run(args.folder, args.device, args.verbose) else 1


if __name__ == "__main__":
    sys.exit(main())
