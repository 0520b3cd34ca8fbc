"""docker-compose.yml and docker/Dockerfile, read as text (no docker needed).

Every service runs an image that exists (a public one, or ours built from a Dockerfile in the repository),
our services start commands the real CLIs accept, the workers serve pools that `genmocap deploy` creates,
each GPU worker has a GPU of its own, and every genmocap container sees the same mounts.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEFAULT_CONTROL_POOL = "genmocap-control"  # `genmocap deploy`'s default for --control-pool


def _pinned(package: str) -> str:
    for dep in PYPROJECT["project"]["dependencies"]:
        m = re.fullmatch(rf"{package}==(\S+)", dep.replace(" ", ""))
        if m:
            return m.group(1)
    raise AssertionError(f"pyproject.toml does not pin {package}")


PYTHON = re.fullmatch(r"==(\d+\.\d+)\.\*", PYPROJECT["project"]["requires-python"]).group(1)
PUBLIC_IMAGES = {"postgres:15", f"prefecthq/prefect:{_pinned('prefect')}-python{PYTHON}"}


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def _argv(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def _option(argv: list[str], flag: str, default: str | None = None) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return default


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    return env if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def _ours(services: dict) -> dict:
    return {name: s for name, s in services.items() if str(s.get("image", "")).startswith("genmocap:")}


def _gpu_ids(service: dict) -> list[str] | None:
    """The device_ids a service reserves, None when it reserves no GPU."""
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    return None if not devices else [str(i) for d in devices for i in d.get("device_ids", [])]


def _created_pools(services: dict) -> set[str]:
    deploys = [_argv(s) for s in _ours(services).values() if _argv(s)[:2] == ["genmocap", "deploy"]]
    assert len(deploys) == 1, "exactly one service must run `genmocap deploy` (creates pools and deployments)"
    return {_option(deploys[0], "--pool"), _option(deploys[0], "--control-pool", DEFAULT_CONTROL_POOL)}


def test_images_are_public_or_built_from_this_repository(services):
    for name, service in services.items():
        image = service.get("image")
        if image in PUBLIC_IMAGES:
            continue
        assert str(image).startswith("genmocap:"), f"{name}: unknown image {image!r}, known: {PUBLIC_IMAGES}"
        build = service.get("build")
        assert isinstance(build, dict) and build.get("dockerfile"), f"{name}: {image} needs build.dockerfile"
        dockerfile = ROOT / build.get("context", ".") / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"


def test_genmocap_commands_are_accepted_by_the_cli(services):
    from pipeline.cli import _parser

    parser = _parser()
    subcommands = next(a.choices for a in parser._actions if isinstance(a.choices, dict))
    for name, service in _ours(services).items():
        argv = _argv(service)
        assert argv and argv[0] in ("genmocap", "prefect"), f"{name}: command {argv} is not genmocap/prefect"
        if argv[0] != "genmocap":
            continue
        known = sorted(subcommands)
        assert argv[1] in subcommands, f"{name}: `genmocap {argv[1]}` is not a subcommand (known: {known})"
        try:
            parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{name}: the genmocap CLI rejects `{shlex.join(argv)}` (its message is above)")


def test_workers_serve_the_pools_that_setup_creates(services):
    pools = _created_pools(services)
    served = set()
    for name, service in _ours(services).items():
        argv = _argv(service)
        if argv[:1] != ["prefect"]:
            continue
        assert argv[:3] == ["prefect", "worker", "start"], f"{name}: {argv}"
        assert _option(argv, "--type") == "process", f"{name}: flow runs are local processes (--type process)"
        assert _option(argv, "--pool") in pools, f"{name}: pool {_option(argv, '--pool')!r} not in {pools}"
        served.add(_option(argv, "--pool"))
    assert served == pools, f"pools without a worker: {pools - served}"


def test_each_gpu_worker_has_a_gpu_of_its_own(services):
    # device_ids, not CUDA_VISIBLE_DEVICES, splits the GPUs: in a container given host GPU N that GPU is
    # CUDA device 0, so CUDA_VISIBLE_DEVICES=N would leave it with no GPU at all.
    workers = {n: s for n, s in _ours(services).items() if _gpu_ids(s) is not None}
    assert workers, "no service reserves a GPU"
    ids = []
    for name, service in workers.items():
        assert len(_gpu_ids(service)) == 1, f"{name}: reserve exactly one GPU by device_ids"
        assert _option(_argv(service), "--limit") == "1", f"{name}: one clip at a time per GPU (--limit 1)"
        cuda_visible = _env(service).get("CUDA_VISIBLE_DEVICES", "0")
        assert cuda_visible == "0", f"{name}: leave CUDA_VISIBLE_DEVICES unset"
        ids += _gpu_ids(service)
    assert len(set(ids)) == len(ids), f"two workers share a GPU: {sorted(ids)}"
    setup = next(_argv(s) for s in services.values() if _argv(s)[:2] == ["genmocap", "deploy"])
    assert int(_option(setup, "--gpu-slots", "0")) >= len(workers), "fewer --gpu-slots than GPU workers"


def _mount(entry) -> tuple[str, str]:
    """(source, target) of a short ("src:dst[:mode]", src may be "${VAR:-/path}") or long volume entry."""
    if isinstance(entry, dict):
        return entry.get("source", ""), entry["target"]
    m = re.fullmatch(r"(\$\{[^}]*\}|[^:]*):([^:]+)(:\w+)?", entry)
    assert m, f"cannot read volume {entry!r}"
    return m.group(1), m.group(2)


def test_volumes_are_declared_or_bind_mounts_and_shared_by_all_genmocap_services(services):
    declared = yaml.safe_load((ROOT / "docker-compose.yml").read_text()).get("volumes") or {}
    for name, service in services.items():
        for entry in service.get("volumes", []):
            source, _ = _mount(entry)
            bind = source.startswith(("/", ".", "~", "$"))
            assert bind or source in declared, f"{name}: volume {source!r} is not in the top-level volumes"
    # a clip's run may land on any worker: all of them must see the same footage, outputs and weights
    mounts = {name: sorted(map(_mount, s.get("volumes", []))) for name, s in _ours(services).items()}
    first = next(iter(mounts.values()))
    needed = {"/footage", "/mocap", "/weights", "/body_models"}
    assert needed <= {target for _, target in first}, f"genmocap services must mount {sorted(needed)}"
    assert all(m == first for m in mounts.values()), f"genmocap services mount different folders: {mounts}"


def test_prefect_server_has_a_healthcheck_that_setup_waits_for(services):
    server = next(n for n, s in services.items() if str(s.get("image", "")).startswith("prefecthq/prefect:"))
    assert services[server].get("healthcheck", {}).get("test"), f"{server}: no healthcheck"
    setup = next(s for s in services.values() if _argv(s)[:2] == ["genmocap", "deploy"])
    assert setup["depends_on"][server]["condition"] == "service_healthy"


def test_dockerfile_installs_the_package_on_cuda_with_python_and_ffmpeg():
    text = (ROOT / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    base = re.findall(r"^FROM\s+(\S+)", text, re.M)[-1]
    assert base.startswith("nvidia/cuda:"), f"not a CUDA base image: {base}"
    apt = " ".join(re.findall(r"apt-get install (.*)", text)).split()
    assert "ffmpeg" in apt and f"python{PYTHON}" in apt, "apt-get install must include ffmpeg and python"
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", text), "the image must `pip install .` this repository"
    for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        folder = package.rstrip("*")
        assert re.search(rf"^COPY\s+{folder}/?\s", text, re.M), f"the image does not COPY {folder}/"
