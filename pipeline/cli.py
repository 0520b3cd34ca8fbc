"""``genmocap`` command line: a thin layer over the Python API.

Exit codes: 0 every clip ok, 1 at least one clip failed (the others still done), 2 usage or config error.
The Prefect orchestrator is passed in by ``flows.cli`` (the console script), so this module never imports
``flows``; ``run.orchestrator=local`` runs the same stages in plain Python.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline import __version__
from pipeline.config import Config, ConfigError, dump_default_yaml, load_config
from pipeline.discover import Clip, DiscoveryError, discover
from pipeline.progress import Progress
from pipeline.registry import REGISTRY, MissingWeightsError, body_model_path, fetch_all, require, search_dirs
from pipeline.registry import status as weights_status
from pipeline.report import summary_text
from pipeline.runner import RunContext, needed_weights, run_batch
from stages import STAGES

Orchestrator = Callable[[list[Clip], RunContext], dict]
Command = Callable[[argparse.Namespace], int]

EXIT_OK, EXIT_CLIP_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genmocap", description="Folders of video -> world-frame SMPL-X motion.")
    p.add_argument("--version", action="version", version=f"genmocap {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="process clips (files, folders, globs, manifests)")
    r.add_argument("inputs", nargs="+", metavar="INPUT")
    r.add_argument("--out", required=True, type=Path, help="output folder")
    r.add_argument("--config", type=Path, help="YAML config (see `genmocap config`)")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="K=V",
        help="override a config value, e.g. --set track.select=largest (repeatable)",
    )
    r.add_argument(
        "--until", choices=STAGES, help="run up to this stage, with every stage it needs (default: all)"
    )
    r.add_argument(
        "--stages",
        type=_stage_list,
        metavar="A,B",
        help=f"run these stages and what they need, e.g. --stages camera (stages: {', '.join(STAGES)})",
    )
    r.add_argument(
        "--detections",
        type=Path,
        metavar="FILE",
        help="boxes instead of the detector: JSON/CSV of frame,x1,y1,x2,y2,score[,track_id][,clip], "
        "or a folder of per-clip files named after the clip",
    )

    r.add_argument(
        "--pool",
        metavar="NAME",
        help="run each clip as a flow run on this Prefect work pool (after `genmocap deploy --pool NAME`; "
        "needs PREFECT_API_URL)",
    )

    dp = sub.add_parser(
        "deploy",
        help="register work pools, deployments, the gpu limit and crash detection with a Prefect server",
        description="Idempotent. Needs PREFECT_API_URL. Then start workers: "
        "`prefect worker start --pool NAME --type process --limit 1` (one per GPU, CUDA_VISIBLE_DEVICES=N).",
    )
    dp.add_argument("--pool", required=True, metavar="NAME", help="pool of the per-clip runs (GPU)")
    dp.add_argument("--control-pool", default="genmocap-control", metavar="NAME", help="coordinators' pool")
    dp.add_argument("--gpu-slots", type=int, metavar="N", help="slots of the limit 'gpu'")
    dp.add_argument("--heartbeat", type=int, default=30, metavar="S", help="flow-run heartbeat (s, >= 30)")
    dp.add_argument(
        "--zombie-seconds",
        type=int,
        default=90,
        metavar="S",
        help="silent this long: Crashed",
    )

    sc = sub.add_parser(
        "schedule",
        help="nightly drop folders: register a cron schedule on the server, or list/pause/resume/delete one",
        description="Each scheduled run takes only new, changed or failed clips (files still being copied "
        "wait for the next run) and runs them on --pool; it writes OUT/reports/<start>.json.",
    )
    sc.add_argument("inputs", nargs="*", metavar="FOLDER")
    sc.add_argument("--out", type=Path, help="output folder (same path on every worker)")
    sc.add_argument("--cron", default="0 2 * * *", help="cron expression (default: 02:00 nightly)")
    sc.add_argument("--timezone", default="UTC", help="time zone of the cron expression, e.g. Europe/London")
    sc.add_argument("--pool", default="gpu", metavar="NAME", help="pool that runs the clips")
    sc.add_argument("--name", default="nightly", help="schedule name (default nightly)")
    sc.add_argument("--config", type=Path)
    sc.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    sc.add_argument("--detections", type=Path, metavar="FILE")
    sc.add_argument(
        "--settle", type=float, default=120.0, metavar="S", help="skip files modified in the last S seconds"
    )
    sc.add_argument(
        "--max-nights", type=int, default=3, metavar="N", help="give a clip up after N failed runs in a row"
    )
    act = sc.add_mutually_exclusive_group()
    act.add_argument("--list", action="store_true", help="list genmocap schedules")
    act.add_argument("--pause", metavar="NAME")
    act.add_argument("--resume", metavar="NAME")
    act.add_argument("--delete", metavar="NAME")

    d = sub.add_parser("doctor", help="check ffmpeg, GPU, weights and body model")
    d.add_argument("--json", action="store_true")

    m = sub.add_parser("models", help="list weight files, where they are looked for, and their status")
    m.add_argument(
        "action",
        nargs="?",
        choices=["list", "fetch"],
        default="list",
        help="list (default); fetch: download every file with a public source that is not present yet "
        "(YOLO; GEM's gem_smpl.ckpt and ONNX exports of ViTPose-H and HMR2 from huggingface.co/nvidia/GEM-X)",
    )
    m.add_argument("names", nargs="*", metavar="NAME", help="fetch only these files (e.g. yolov8x.pt)")
    m.add_argument("--json", action="store_true")

    sub.add_parser("config", help="print the default config as YAML")

    e = sub.add_parser(
        "export",
        help="re-export FBX/BVH/USD from existing smpl.npz results (nothing is re-run)",
        description="Write motion.fbx/.bvh/.usda for each smpl.npz (or every smpl.npz under a folder). "
        "The clip's camera_world.npz, when present, is added to FBX and USD.",
    )
    e.add_argument("inputs", nargs="+", metavar="SMPL_NPZ", help="smpl.npz files or folders holding them")
    e.add_argument(
        "--body-model", type=Path, help="SMPLX_NEUTRAL.npz or its folder (default: $GENMOCAP_BODY_MODEL)"
    )
    e.add_argument("--out", type=Path, help="output folder (<out>/<clip>/<person>/; default: beside inputs)")
    e.add_argument("--formats", default="fbx,bvh,usd", help="comma-separated: fbx, bvh, usd (default all)")
    e.add_argument("--root-motion", choices=["world", "in_place"], default="world")
    e.add_argument("--up", choices=["y", "z"], default="y")
    e.add_argument("--units", choices=["cm", "m"], default="cm")
    e.add_argument("--hands", action="store_true", help="add jaw, eye and finger joints (at rest)")
    e.add_argument("--mesh", action="store_true", help="add the skinned SMPL-X mesh (FBX, USD)")
    e.add_argument("--no-camera", action="store_true", help="leave the solved camera out")
    e.add_argument("--usd-format", choices=["usda", "usdc"], default="usda")
    e.add_argument("--verify", action="store_true", help="read every file back, report the max joint error")
    e.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def main(
    argv: list[str] | None = None,
    orchestrators: dict[str, Orchestrator] | None = None,
    commands: dict[str, Command] | None = None,
) -> int:
    """``commands``: the server commands (deploy, schedule), given by ``flows.cli``."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        return cmd_run(args, orchestrators or {})
    if args.command in ("deploy", "schedule"):
        if args.command not in (commands or {}):
            _err(f"`{args.command}` needs Prefect: use the `genmocap` console script")
            return EXIT_USAGE
        return commands[args.command](args)
    if args.command == "doctor":
        return cmd_doctor(args)
    if args.command == "models":
        return cmd_models(args)
    if args.command == "export":
        return cmd_export(args)
    print(dump_default_yaml(), end="")
    return EXIT_OK


def _stage_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}"
        )
    return names


def _err(msg: str) -> None:
    print(f"genmocap: {msg}", file=sys.stderr)


def cmd_run(args: argparse.Namespace, orchestrators: dict[str, Orchestrator]) -> int:
    overrides = list(args.overrides) + ([f"run.until={args.until}"] if args.until else [])
    overrides += [f"run.stages=[{','.join(args.stages)}]"] if args.stages else []
    overrides += [f"run.pool={args.pool}"] if args.pool else []
    try:
        cfg = load_config(args.config, overrides)
        clips = discover(args.inputs)
    except (ConfigError, DiscoveryError) as e:
        _err(str(e))
        return EXIT_USAGE
    if not clips:
        _err(f"no clips found in {' '.join(args.inputs)} (looked for videos and image-sequence folders)")
        return EXIT_USAGE
    orchestrator = cfg.run.orchestrator
    if orchestrator != "local" and orchestrator not in orchestrators:
        _err(f"run.orchestrator={orchestrator} is not available here; use --set run.orchestrator=local")
        return EXIT_USAGE
    if cfg.run.pool and orchestrator != "prefect":
        _err("--pool (run.pool) runs clips on Prefect workers: it needs run.orchestrator=prefect")
        return EXIT_USAGE
    try:
        with Progress(cfg.run.progress) as progress:
            ctx = RunContext.create(cfg, args.out, detections=args.detections, progress=progress)
            # Missing weights are a set-up problem, not a bad clip: list every missing file once, before
            # any work (files with a public source are downloaded first when online). With a pool, the
            # workers hold the weights, not this machine.
            if not cfg.run.pool:
                require(ctx.required_weights())
            runner = run_batch if orchestrator == "local" else orchestrators[orchestrator]
            report = runner(clips, ctx)
    except MissingWeightsError as e:
        _err(str(e))
        return EXIT_USAGE
    except (FileNotFoundError, ValueError) as e:  # e.g. an unreadable --detections file
        _err(str(e))
        return EXIT_USAGE
    print(summary_text(report))
    print(f"report: {args.out / 'report.json'}")
    return EXIT_OK if report["summary"]["failed"] == 0 else EXIT_CLIP_FAILED


def _tool_version(exe: str) -> str | None:
    path = shutil.which(exe)
    if not path:
        return None
    try:
        out = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0] if out else path


def _gpu_names() -> list[str]:
    """Names of the NVIDIA GPUs the driver reports (``nvidia-smi -L``); empty without a driver."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [ln.split(":", 1)[1].split("(UUID")[0].strip() for ln in out.splitlines() if ln.startswith("GPU")]


def cmd_doctor(args: argparse.Namespace) -> int:
    checks: list[dict] = []

    def add(name: str, ok: bool, detail: str, fix: str = "", required: bool = True) -> None:
        checks.append(
            {"check": name, "ok": ok, "detail": detail, "fix": "" if ok else fix, "required": required}
        )

    add("python", sys.version_info[:2] == (3, 11), platform.python_version(), "use CPython 3.11")
    for exe in ("ffmpeg", "ffprobe"):
        v = _tool_version(exe)
        add(exe, v is not None, v or "not found", "apt-get install ffmpeg")
    # torch is not imported here (seconds of start-up): its version from the package metadata, the GPUs from
    # the NVIDIA driver's own tool
    from importlib.metadata import PackageNotFoundError, version

    try:
        add("torch", True, f"torch {version('torch')}")
    except PackageNotFoundError:
        add("torch", False, "not installed", "reinstall: make setup")
    gpus = _gpu_names()
    add(
        "gpu",
        bool(gpus),
        ", ".join(gpus) if gpus else "no CUDA GPU: stages run on the CPU (slow)",
        "optional",
        required=False,
    )
    # where each network stage of a default run will run, and on which engine (no torch import: the
    # device follows the driver's GPUs and run.device=auto)
    from stages.perception import resolve_engine

    cfg = Config()
    device = "cuda" if gpus else "cpu"
    roles = needed_weights(cfg)
    for stage, role in (("track", "detector"), ("keypoints", "vitpose"), ("features", "hmr2")):
        if role not in roles:
            continue
        settings = getattr(cfg, stage)
        engine = resolve_engine(getattr(settings, "engine", "auto"), roles[role], device)
        how = f"{engine} on {device}" + (" (bf16)" if getattr(settings, "bf16", False) else "")
        if engine == "torch" and roles[role].endswith(".onnx"):
            how += f", weights imported from {roles[role]}"
        add(f"runs {stage}", True, f"{how} ({roles[role]})", required=False)
    gem = f"torch on {device}" + (" (bf16)" if cfg.estimate.bf16 else "")
    add("runs estimate", True, gem, required=False)
    # the files a default run needs (auto: the original ViTPose/HMR2 when present, else GEM's ONNX + sidecar)
    default_needs = set(roles.values())
    default_needs |= {REGISTRY[n].sidecar for n in default_needs if n in REGISTRY and REGISTRY[n].sidecar}
    for row in weights_status():
        needed = row["file"] in default_needs
        where = row["path"] or ("downloadable" if row["downloadable"] else "missing")
        add(f"weights {row['file']}", bool(row["path"]), where, row["how_to_get"], required=needed)
    bm = body_model_path()
    add(
        "body model SMPL-X",
        bm is not None,
        str(bm) if bm else "missing",
        "licence-gated: register at the SMPL-X website, download SMPLX_NEUTRAL.npz, then set "
        "GENMOCAP_BODY_MODEL=/path/to/it (needed only for IK and FBX/BVH/USD export)",
        required=False,
    )

    if args.json:
        print(json.dumps(checks, indent=2))
    else:
        for c in checks:
            mark = "ok " if c["ok"] else ("-- " if not c["required"] else "!! ")
            print(f"{mark} {c['check']:<34} {c['detail']}" + (f"\n      fix: {c['fix']}" if c["fix"] else ""))
    bad = [c for c in checks if c["required"] and not c["ok"] and not c["check"].startswith("weights")]
    return EXIT_OK if not bad else EXIT_CLIP_FAILED


def cmd_models(args: argparse.Namespace) -> int:
    if args.action == "fetch":
        # every file with a public source (YOLO, GEM's checkpoint and ONNX exports); present ones are kept
        rc = EXIT_OK
        for name, path, error in fetch_all(args.names or None):
            if error:  # the whole message once, then one line per file (offline, every file fails alike)
                _err(error if rc == EXIT_OK else f"{name}: {error.splitlines()[-1].strip()}")
                rc = EXIT_CLIP_FAILED
            else:
                print(f"{name}: {path}")
        return rc
    rows = weights_status()
    if args.json:
        print(json.dumps({"search_dirs": [str(d) for d in search_dirs()], "weights": rows}, indent=2))
        return EXIT_OK
    print("looked for (in order): the path as given, " + ", ".join(str(d) for d in search_dirs()))
    for r in rows:
        size = f" (~{r['size_mb'] / 1000:.1f} GB)" if r["size_mb"] and r["size_mb"] >= 1000 else ""
        state = r["path"] or (
            f"not present{size} (downloadable: genmocap models fetch)" if r["downloadable"] else "not present"
        )
        if r["path"] and r["hash_check"] == "changed":
            state += f" (contents differ from the sha256 {r['sha256'][:12]}... expected)"
        print(f"{r['stage']:<10} {r['file']:<28} {state}")
        if not r["path"]:
            print(f"{'':<10} how to get it: {r['how_to_get']}")
    return EXIT_OK


def _smpl_inputs(inputs: list[str]) -> list[Path]:
    found: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found += sorted(q for q in p.rglob("smpl.npz") if ".genmocap" not in q.parts)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {item}")
    return list(dict.fromkeys(found))


def cmd_export(args: argparse.Namespace) -> int:
    """Re-export existing results: 0 every file written, 1 some failed, 2 usage error or no body model."""
    from pydantic import ValidationError

    from models.body_model import BodyModel, BodyModelError
    from stages.export import CAMERA_FILE, ExportSettings, export_files

    try:
        settings = ExportSettings(
            formats=[f.strip() for f in args.formats.split(",") if f.strip()],
            root_motion=args.root_motion,
            up=args.up,
            units=args.units,
            hands=args.hands,
            mesh=args.mesh,
            camera=not args.no_camera,
            usd_format=args.usd_format,
        )
    except ValidationError as e:
        _err(f"invalid option: {'; '.join(str(x['msg']) for x in e.errors())} (--formats {args.formats})")
        return EXIT_USAGE
    bm_path = args.body_model or body_model_path()
    if bm_path is None:
        _err(
            "no SMPL-X body model: pass --body-model or set GENMOCAP_BODY_MODEL to SMPLX_NEUTRAL.npz "
            "(licence-gated: register at the SMPL-X website)"
        )
        return EXIT_USAGE
    try:
        body = BodyModel.load(bm_path)
        inputs = _smpl_inputs(args.inputs)
    except (BodyModelError, FileNotFoundError) as e:
        _err(str(e))
        return EXIT_USAGE
    if not inputs:
        _err(f"no smpl.npz found in {' '.join(args.inputs)}")
        return EXIT_USAGE
    results = []
    failed = False
    for npz in inputs:
        person_dir = npz.parent if args.out is None else args.out / npz.parent.parent.name / npz.parent.name
        camera = npz.parent.parent / CAMERA_FILE
        try:
            cam = camera if camera.is_file() else None
            res = export_files(npz, person_dir, settings, body, camera=cam, verify=args.verify)
        except Exception as e:  # unreadable or not a genmocap result: that input fails, the others go on
            _err(f"{npz}: {e}")
            failed = True
            results.append({"input": str(npz), "error": str(e)})
            continue
        failed = failed or bool(res.failed)
        results.append({"input": str(npz), **res.to_dict()})
        if not args.json:
            line = f"{person_dir}: " + (", ".join(res.files) or "nothing written")
            if res.verified:
                line += "  (max error " + ", ".join(f"{k} {v:.4f} mm" for k, v in res.verified.items()) + ")"
            print(line)
            for fmt, why in res.failed.items():
                print(f"  {fmt} not written: {why}")
    if args.json:
        print(json.dumps(results, indent=2))
    return EXIT_CLIP_FAILED if failed else EXIT_OK
