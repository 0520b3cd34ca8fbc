"""Register genmocap with a Prefect server: pools, deployments, the GPU limit, crash detection, schedules.

    genmocap deploy --pool gpu [--gpu-slots 4]         # once per server (idempotent)
    prefect worker start --pool gpu --type process --limit 1      # on each GPU (CUDA_VISIBLE_DEVICES=N)
    prefect worker start --pool genmocap-control --type process   # somewhere, for scheduled coordinators
    genmocap run FOLDER --out OUT --pool gpu            # one process_clip run per clip, on the pool
    genmocap schedule FOLDER --out OUT --cron "0 2 * * *" --pool gpu --name nightly

Deployments point at the installed package (``flows.clip.process_clip``), so a worker needs genmocap
installed, not a copy of any source tree. Everything here talks to ``PREFECT_API_URL``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import flows  # noqa: F401  (Prefect defaults before prefect is imported)

CONTROL_POOL = "genmocap-control"
ZOMBIE_AUTOMATION = "genmocap: mark zombie flow runs crashed"
TAG = "genmocap"
HEARTBEAT_SECONDS = 30  # Prefect's shortest flow-run heartbeat


def _heartbeat(seconds: int) -> dict:
    """Job variables that make a deployment's flow runs send a heartbeat every ``seconds``."""
    return {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(seconds)}}


class DeployError(RuntimeError):
    """No server, or the server refused; the message says what to do."""


def _require_server() -> None:
    from prefect.settings import get_current_settings

    if get_current_settings().api.url is None:
        raise DeployError(
            "no Prefect server: set PREFECT_API_URL (e.g. http://prefect-server:4200/api); "
            "`docker compose up -d prefect-server` starts one"
        )


def _ensure_pool(client: Any, name: str) -> bool:
    """Create a process work pool ``name`` unless it exists; True if created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        client.read_work_pool(name)
        return False
    except ObjectNotFound:
        template = ProcessWorker.get_default_base_job_template()
        client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
        return True


def _zombie_automation(zombie_seconds: int) -> None:
    """The automation that marks a flow run Crashed when its heartbeats stop (worker machine lost)."""
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(ZOMBIE_AUTOMATION):
            client.delete_automation(old.id)
    terminal = ["Completed", "Failed", "Cancelled", "Crashed"]
    Automation(
        name=ZOMBIE_AUTOMATION,
        description="a flow run that stopped sending heartbeats is marked Crashed (genmocap re-runs it)",
        trigger=EventTrigger(
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in terminal)},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=zombie_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {zombie_seconds} s: the worker or its machine was lost",
            )
        ],
    ).create()


def _apply(flow: Any, name: str, pool: str, **kwargs: Any) -> Any:
    """Register ``flow`` as deployment ``name`` on ``pool``, pointing at the installed module."""
    from prefect.deployments.runner import EntrypointType

    dep = flow.to_deployment(name=name, entrypoint_type=EntrypointType.MODULE_PATH, tags=[TAG], **kwargs)
    return dep.apply(work_pool_name=pool)


def deploy(
    pool: str,
    control_pool: str = CONTROL_POOL,
    gpu_slots: int | None = None,
    heartbeat_seconds: int = HEARTBEAT_SECONDS,
    zombie_seconds: int = 90,
) -> list[str]:
    """Register everything a server needs; returns what was done, one line each. Idempotent.

    - process work pools ``pool`` (clip runs: GPU workers) and ``control_pool`` (coordinators: CPU);
    - deployments ``process_clip/<pool>`` (flow runs send a heartbeat every ``heartbeat_seconds``) and
      ``process_folder/<pool>`` (a coordinator that submits to ``pool``);
    - with ``gpu_slots``, the global concurrency limit ``gpu`` (GPU stages hold one slot each);
    - the automation marking flow runs without a heartbeat for ``zombie_seconds`` Crashed.
    """
    from prefect.client.orchestration import get_client

    from flows.clip import process_clip
    from flows.folder import process_folder

    _require_server()
    if zombie_seconds <= heartbeat_seconds:
        raise DeployError(
            f"--zombie-seconds ({zombie_seconds}) must exceed --heartbeat ({heartbeat_seconds})"
        )
    done = []
    with get_client(sync_client=True) as client:
        for name in (pool, control_pool):
            done.append(f"work pool {name}: {'created' if _ensure_pool(client, name) else 'exists'}")
        if gpu_slots is not None:
            client.upsert_global_concurrency_limit_by_name("gpu", gpu_slots)
            done.append(f"global concurrency limit gpu: {gpu_slots} slot(s)")
    heartbeat = _heartbeat(heartbeat_seconds)
    _apply(process_clip, pool, pool, job_variables=heartbeat)
    done.append(f"deployment process_clip/{pool} on pool {pool}")
    _apply(process_folder, pool, control_pool, job_variables=heartbeat, parameters={"pool": pool})
    done.append(f"deployment process_folder/{pool} on pool {control_pool}")
    _zombie_automation(zombie_seconds)
    done.append(f"automation: flow runs silent for {zombie_seconds} s are marked Crashed")
    return done


def schedule(
    name: str,
    inputs: list[str],
    out: str,
    cron: str,
    pool: str,
    timezone: str = "UTC",
    control_pool: str = CONTROL_POOL,
    settings: dict | None = None,
    detections: str | None = None,
    settle_seconds: float = 120.0,
    max_failed_runs: int = 3,
) -> str:
    """Register (or replace) the nightly deployment ``process_folder/<name>``: on ``cron`` (in
    ``timezone``) a coordinator on ``control_pool`` takes the new, changed and failed clips of ``inputs``
    and runs them on ``pool``. Returns a one-line description."""
    from prefect.schedules import Cron

    from flows.folder import process_folder

    _require_server()
    params = {
        "inputs": inputs,
        "out": out,
        "settings": settings,
        "detections": detections,
        "pool": pool,
        "only_new": True,
        "settle_seconds": settle_seconds,
        "max_failed_runs": max_failed_runs,
    }
    _apply(
        process_folder,
        name,
        control_pool,
        schedules=[Cron(cron, timezone=timezone)],
        parameters=params,
        job_variables=_heartbeat(HEARTBEAT_SECONDS),
    )
    return (
        f"schedule process_folder/{name}: {cron} ({timezone}) over {' '.join(inputs)} -> {out} on pool {pool}"
    )


def _scheduled(client: Any) -> list[Any]:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterTags,
        FlowFilter,
        FlowFilterName,
    )

    deps = client.read_deployments(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["process_folder"])),
        deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[TAG])),
    )
    return [d for d in deps if d.schedules]


def list_schedules() -> list[dict]:
    """Every genmocap schedule on the server: name, cron, timezone, active, inputs, out, pool."""
    from prefect.client.orchestration import get_client

    _require_server()
    rows = []
    with get_client(sync_client=True) as client:
        for d in _scheduled(client):
            s = d.schedules[0].schedule
            rows.append(
                {
                    "name": d.name,
                    "cron": getattr(s, "cron", str(s)),
                    "timezone": getattr(s, "timezone", None),
                    "active": not d.paused,
                    "inputs": d.parameters.get("inputs"),
                    "out": d.parameters.get("out"),
                    "pool": d.parameters.get("pool"),
                }
            )
    return rows


def change_schedule(name: str, action: str) -> str:
    """``action`` = pause | resume | delete the schedule ``process_folder/<name>``."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    _require_server()
    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(f"process_folder/{name}")
        except ObjectNotFound:
            raise DeployError(f"no schedule named {name!r} (see `genmocap schedule --list`)") from None
        if action == "pause":
            client.pause_deployment(dep.id)
        elif action == "resume":
            client.resume_deployment(dep.id)
        elif action == "delete":
            client.delete_deployment(dep.id)
        else:
            raise ValueError(action)
    return f"schedule {name}: {action}d"
