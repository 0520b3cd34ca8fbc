"""Real PostgreSQL and a real Prefect server on loopback, for tests that scale out on Prefect.

``start_postgres(root)`` runs a throw-away PostgreSQL cluster from Debian's binaries (``apt-get install
postgresql``; ``/usr/lib/postgresql/*/bin``, or ``initdb`` on PATH) on a free port of 127.0.0.1 with trust
auth, its unix socket in its data folder, and a database ``prefect``. As root the cluster runs as the
``postgres`` system user (``initdb`` refuses root). ``start_prefect_server(db_url, root)`` runs
``prefect server start`` on it with the background services (scheduler, late runs, proactive automation
triggers) looping every few seconds. ``start_worker`` runs a process worker; ``stop_process_group`` ends
a worker or server with every process it started, flow runs included.

From a shell (CI)::

    python -m tools.services start DIR   # starts both, writes DIR/services.env and DIR/services.json, exits
    source DIR/services.env              # GENMOCAP_TEST_PG_URL, GENMOCAP_TEST_PREFECT_API_URL
    python -m tools.services stop DIR    # stops both (safe when missing or already stopped)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

PG_USER = "postgres"  # the database superuser, and the system user the cluster runs as when we are root
PG_DATABASE = "prefect"
ENV_PG_URL = "GENMOCAP_TEST_PG_URL"
ENV_PREFECT_API_URL = "GENMOCAP_TEST_PREFECT_API_URL"
INSTALL_HINT = "PostgreSQL server binaries not found: sudo apt-get install postgresql"

# Server settings (Prefect 3.8 names) that make the background services act within seconds in tests.
FAST_SERVICES_ENV: dict[str, str] = {
    # scheduler: cron/interval schedules get their runs (default 60 s; recently changed deployments: 5 s)
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
    # late runs: looked for every 2 s (default 5 s), late 5 s after their start time (default 15 s)
    "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "2",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": "5",
    # triggers: proactive automations (posture Proactive) evaluated every 2 s (default 5 s); ISO 8601 only
    "PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY": "PT2S",
    # cancellation cleanup (default 20 s)
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_LOOP_SECONDS": "5",
}

_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes, and the socket's name adds ".s.PGSQL.NNNNN"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path | None, n: int = 60) -> str:
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"({path}: {e})"


# ---------------------------------------------------------------------------------------------- PostgreSQL


def find_postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server binaries (``initdb``, ``pg_ctl``, ``postgres``), newest first.

    Debian's ``/usr/lib/postgresql/<version>/bin``, else the folder ``initdb`` on PATH resolves to; None
    when there is none.
    """

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(os.path.realpath(initdb)).parent)
    for d in candidates:
        if all((d / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _pg_user() -> str | None:
    """The system user the cluster must run as: ``postgres`` when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
    except KeyError as e:
        raise RuntimeError(
            f"running as root but there is no {PG_USER!r} system user to run PostgreSQL"
        ) from e
    return PG_USER


def _as_user(cmd: list[str], user: str | None) -> list[str]:
    """``cmd`` run as ``user`` (``runuser``, else ``su``); ``cmd`` itself when ``user`` is None."""
    if user is None:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *cmd]
    return ["su", user, "-s", "/bin/sh", "-c", shlex.join(cmd)]


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (from ``/``, readable by any user), raising with its output when it fails."""
    r = subprocess.run(
        cmd, cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r


def _user_can_enter(user: str, folder: Path) -> bool:
    """Whether ``user`` can reach and enter ``folder`` (every parent searchable)."""
    r = subprocess.run(
        _as_user(["test", "-x", str(folder)], user), cwd="/", stdin=subprocess.DEVNULL, capture_output=True
    )
    return r.returncode == 0


@dataclass
class Postgres:
    """A running throw-away PostgreSQL cluster (see ``start_postgres``)."""

    port: int
    pgdata: Path
    bin_dir: Path
    user: str | None = None  # system user the server runs as (None: this process's user)
    remove_pgdata: bool = False  # pgdata lives outside root (a private temp folder): removed by stop()
    link: Path | None = None  # root/pgdata when it is a symlink to pgdata
    stopped: bool = field(default=False, compare=False)

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``prefect`` database, for ``PREFECT_SERVER_DATABASE_CONNECTION_URL``."""
        return f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{self.port}/{PG_DATABASE}"

    @property
    def log(self) -> Path:
        """The server's log file."""
        return self.pgdata / "postgres.log"

    def to_json(self) -> dict[str, object]:
        """What ``from_json`` needs to stop this cluster from another process."""
        return {
            "port": self.port,
            "url": self.url,
            "pgdata": str(self.pgdata),
            "bin_dir": str(self.bin_dir),
            "pg_ctl": str(self.bin_dir / "pg_ctl"),
            "user": self.user,
            "remove_pgdata": self.remove_pgdata,
            "link": str(self.link) if self.link else None,
            "log": str(self.log),
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Postgres:
        """The cluster described by ``to_json``'s output."""
        link = d.get("link")
        return cls(
            port=int(d["port"]),  # type: ignore[arg-type]
            pgdata=Path(str(d["pgdata"])),
            bin_dir=Path(str(d["bin_dir"])),
            user=d.get("user"),  # type: ignore[arg-type]
            remove_pgdata=bool(d.get("remove_pgdata")),
            link=Path(str(link)) if link else None,
        )

    def is_ready(self) -> bool:
        """Whether the server accepts connections (``pg_isready``)."""
        isready = self.bin_dir / "pg_isready"
        cmd = [str(isready) if isready.exists() else "pg_isready", "-q", "-h", "127.0.0.1"]
        cmd += ["-p", str(self.port), "-U", PG_USER, "-d", "postgres"]
        return subprocess.run(cmd, cwd="/", timeout=30).returncode == 0

    def stop(self) -> None:
        """``pg_ctl stop -m fast`` (SIGQUIT/SIGKILL to the postmaster if that fails); idempotent."""
        if self.stopped:
            return
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists():
            cmd = [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.pgdata), *"-m fast -w -t 60".split()]
            r = subprocess.run(
                _as_user(cmd, self.user), cwd="/", stdin=subprocess.DEVNULL, capture_output=True, timeout=90
            )
            if r.returncode != 0 and pidfile.exists():
                _kill_postmaster(pidfile)
        if self.remove_pgdata:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            if self.link is not None and self.link.is_symlink():
                self.link.unlink()
        self.stopped = True


def _kill_postmaster(pidfile: Path) -> None:
    """Immediate shutdown (SIGQUIT), then SIGKILL, of the postmaster named in ``postmaster.pid``."""
    try:
        pid = int(pidfile.read_text().split()[0])
        proc = psutil.Process(pid)
    except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
        return
    procs = [proc, *proc.children(recursive=True)]
    proc.send_signal(signal.SIGQUIT)
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def start_postgres(root: Path, bin_dir: Path | None = None) -> Postgres:
    """Init and start a PostgreSQL cluster in ``root/pgdata`` on 127.0.0.1 with a database ``prefect``.

    Trust auth, the unix socket in the data folder (not /var/run), fsync off (throw-away data). As root
    the cluster belongs to and runs as the ``postgres`` user; when that user cannot enter ``root`` (a
    0700 temp folder) or the socket path would be too long, the data folder is a private temp folder that
    ``root/pgdata`` links to and ``stop()`` removes. Returns once ``pg_isready`` says ready.
    """
    bin_dir = bin_dir or find_postgres_bin()
    if bin_dir is None:
        raise RuntimeError(INSTALL_HINT)
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    user = _pg_user()
    pgdata = root / "pgdata"
    remove, link = False, None
    if len(str(pgdata)) > _SOCKET_PATH_MAX or (user is not None and not _user_can_enter(user, root)):
        pgdata, remove, link = Path(tempfile.mkdtemp(prefix="genmocap-pg-")), True, pgdata
        link.symlink_to(pgdata, target_is_directory=True)
    else:
        pgdata.mkdir(mode=0o700)
    pg = Postgres(port=0, pgdata=pgdata, bin_dir=bin_dir, user=user, remove_pgdata=remove, link=link)
    try:
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(pgdata, pw.pw_uid, pw.pw_gid)
        initdb = [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", PG_USER, "-A", "trust", "-E", "UTF8"]
        _run(_as_user([*initdb, "--locale=C", "--no-sync"], user))
        for attempt in range(3):
            pg.port = free_port()
            # the last setting of a name wins, so each attempt's port line overrides the previous one
            with open(pgdata / "postgresql.conf", "a") as f:
                socket_dir = str(pgdata).replace("'", "''")
                f.write(
                    f"\n# genmocap test cluster\nlisten_addresses = '127.0.0.1'\nport = {pg.port}\n"
                    f"unix_socket_directories = '{socket_dir}'\nfsync = off\nsynchronous_commit = off\n"
                    "full_page_writes = off\nmax_connections = 200\n"
                )
            start = [str(bin_dir / "pg_ctl"), "start", "-D", str(pgdata), "-l", str(pg.log), "-w", "-t", "60"]
            try:
                _run(_as_user(start, user), timeout=90)
                break
            except RuntimeError as e:  # retried when the port was taken (no postmaster.pid left)
                if attempt == 2 or (pgdata / "postmaster.pid").exists():
                    raise RuntimeError(f"PostgreSQL did not start: {e}\nlog:\n{_tail(pg.log)}") from None
        deadline = time.monotonic() + 60
        while not pg.is_ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL not ready after 60 s; log:\n{_tail(pg.log)}")
            time.sleep(0.2)
        createdb = bin_dir / "createdb"
        _run([str(createdb), "-h", "127.0.0.1", "-p", str(pg.port), "-U", PG_USER, PG_DATABASE])
    except BaseException:
        pg.stop()
        raise
    return pg


# ------------------------------------------------------------------------------------------------- Prefect


def _prefect_bin() -> str:
    """The ``prefect`` CLI next to this interpreter (the venv's), else the one on PATH."""
    exe = Path(sys.executable).parent / "prefect"
    if exe.exists():
        return str(exe)
    found = shutil.which("prefect")
    if found is None:
        raise RuntimeError("prefect CLI not found (run `make setup`)")
    return found


def _base_env() -> dict[str, str]:
    """This process's environment without its ``PREFECT_*`` settings (profiles, API URL...)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def client_env(api_url: str, home: Path | None = None) -> dict[str, str]:
    """The Prefect settings a client process (flow, worker, CLI) needs to talk to the server at api_url."""
    env = {
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
    }
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    return env


@dataclass
class PrefectServer:
    """A Prefect API server: one this module started (``start_prefect_server``), or an external one."""

    api_url: str
    db_url: str | None = None
    home: Path | None = None  # PREFECT_HOME for clients
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None  # process group leader (== its pgid); None for an external server
    create_time: float | None = None
    stopped: bool = field(default=False, compare=False)

    @property
    def port(self) -> int:
        """The API's TCP port."""
        return int(self.api_url.rsplit(":", 1)[1].split("/", 1)[0])

    def env(self) -> dict[str, str]:
        """Prefect settings for a client process: PREFECT_API_URL, PREFECT_HOME, analytics and prompts off."""
        return client_env(self.api_url, self.home)

    def to_json(self) -> dict[str, object]:
        """What ``from_json`` needs to stop this server from another process."""
        return {
            "api_url": self.api_url,
            "db_url": self.db_url,
            "home": str(self.home) if self.home else None,
            "log": str(self.log) if self.log else None,
            "pid": self.pid,
            "pgid": self.pid,
            "create_time": self.create_time,
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> PrefectServer:
        """The server described by ``to_json``'s output (no Popen: stopped by pid)."""
        home, log = d.get("home"), d.get("log")
        return cls(
            api_url=str(d["api_url"]),
            db_url=d.get("db_url"),  # type: ignore[arg-type]
            home=Path(str(home)) if home else None,
            log=Path(str(log)) if log else None,
            pid=d.get("pid"),  # type: ignore[arg-type]
            create_time=d.get("create_time"),  # type: ignore[arg-type]
        )

    def stop(self) -> None:
        """SIGTERM the server's process group (and descendants), wait, then SIGKILL; idempotent."""
        if self.stopped:
            return
        if self.process is not None:
            stop_process_group(self.process)
        elif self.pid is not None:
            _terminate_group(self.pid, create_time=self.create_time)
        self.stopped = True


def health(api_url: str, timeout: float = 5) -> bool:
    """Whether GET {api_url}/health answers 200."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with opener.open(f"{api_url}/health", timeout=timeout) as r:
            return r.status == 200
    except (OSError, http.client.HTTPException):
        return False


def _wait_healthy(
    server: PrefectServer, proc: subprocess.Popen[bytes], timeout: float, retry_port: bool
) -> bool:
    """Wait for the server's health check: True when healthy, False when it exited because its port was
    taken (and ``retry_port``); raises with the log's tail when it exited otherwise or timed out."""
    deadline = time.monotonic() + timeout
    while not health(server.api_url, timeout=2):
        if proc.poll() is not None:
            if retry_port and "already in use" in _tail(server.log, 20):
                return False
            raise RuntimeError(f"prefect server exited ({proc.returncode}); log:\n{_tail(server.log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"prefect server not healthy after {timeout:.0f} s; log:\n{_tail(server.log)}")
        time.sleep(0.5)
    return True


def start_prefect_server(
    db_url: str, root: Path, timeout: float = 180, extra_env: dict[str, str] | None = None
) -> PrefectServer:
    """Start ``prefect server start --host 127.0.0.1 --port FREE --no-ui`` on the database ``db_url``.

    Own process group; PREFECT_HOME ``root/prefect-home``, clients' ``root/prefect-client``; log
    ``root/prefect-server.log``; analytics and UI off; the services fast (``FAST_SERVICES_ENV``, then
    ``extra_env``); inherited ``PREFECT_*`` variables dropped. Returns once GET /api/health is 200
    (raises with the log's tail after ``timeout`` seconds or when the server exits).
    """
    root = Path(root).resolve()
    home, client_home = root / "prefect-home", root / "prefect-client"
    home.mkdir(parents=True, exist_ok=True)
    client_home.mkdir(exist_ok=True)
    log = root / "prefect-server.log"
    env = _base_env() | {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": db_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PYTHONUNBUFFERED": "1",
        **FAST_SERVICES_ENV,
        **(extra_env or {}),
    }
    for attempt in range(3):
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        cmd = [_prefect_bin(), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
        with open(log, "ab") as out:
            out.write(f"\n=== {shlex.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = PrefectServer(api_url=api_url, db_url=db_url, home=client_home, log=log, process=proc)
        server.pid = proc.pid
        try:
            server.create_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            pass
        try:
            if _wait_healthy(server, proc, timeout, retry_port=attempt < 2):
                return server
        except BaseException:
            server.stop()
            raise
        server.stop()  # lost the port to another process between free_port() and the bind: try another
    raise RuntimeError(f"prefect server did not start; log:\n{_tail(log)}")


def start_worker(
    pool: str, env: dict[str, str], log: Path, name: str, limit: int = 1, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """``prefect worker start --pool POOL --type process --limit N --name NAME`` in its own session.

    ``env`` (e.g. ``PrefectServer.env()``) is laid over this process's environment minus its
    ``PREFECT_*`` variables; stdout and stderr are appended to ``log``. Stop it with
    ``stop_process_group`` (which also ends its flow runs).
    """
    cmd = [_prefect_bin(), "worker", "start", "--pool", pool, "--type", "process"]
    cmd += ["--limit", str(limit), "--name", name]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            env=_base_env() | {"PYTHONUNBUFFERED": "1", **env},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _group_and_descendants(pgid: int, leader: psutil.Process | None) -> list[psutil.Process]:
    """Processes in group ``pgid`` plus every descendant of ``leader`` (flow runs in their own sessions)."""
    found: dict[int, psutil.Process] = {}
    if leader is not None:
        try:
            for p in [leader, *leader.children(recursive=True)]:
                found[p.pid] = p
        except psutil.NoSuchProcess:
            pass
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.pid not in found:
                found[p.pid] = p
                found.update((c.pid, c) for c in p.children(recursive=True))
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


def _signal(procs: list[psutil.Process], pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def _terminate_group(
    pgid: int,
    timeout: float = 15,
    popen: subprocess.Popen[bytes] | None = None,
    create_time: float | None = None,
    leader_alive: bool = True,
) -> None:
    """SIGTERM process group ``pgid`` (leader ``pgid``) and the leader's descendants; SIGKILL leftovers.

    ``create_time`` guards against a reused pid: a leader started at another time is left alone; with
    ``leader_alive`` False (the leader was reaped, its pid may belong to another process) only the group's
    members and their descendants are ended.
    """
    leader: psutil.Process | None = None
    if leader_alive:
        try:
            leader = psutil.Process(pgid)
            if create_time is not None and abs(leader.create_time() - create_time) > 1:
                return
        except psutil.NoSuchProcess:
            pass
    procs = _group_and_descendants(pgid, leader)
    if popen is not None:  # reaped through the Popen, so it records the exit status
        procs = [p for p in procs if p.pid != popen.pid]
    _signal(procs, pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    if popen is not None:
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    _, alive = psutil.wait_procs(procs, timeout=max(0.1, deadline - time.monotonic()))
    if popen is not None and popen.poll() is None:
        try:
            alive.append(psutil.Process(popen.pid))
        except psutil.NoSuchProcess:
            pass
    _signal(alive + _group_and_descendants(pgid, None), pgid, signal.SIGKILL)
    if popen is not None:
        popen.wait(timeout=10)
    psutil.wait_procs(alive, timeout=5)


def stop_process_group(p: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """End a process started with ``start_new_session=True``, its whole group and all its descendants.

    SIGTERM, up to ``timeout`` seconds' grace, then SIGKILL; reaps ``p``. Safe when already ended.
    """
    if p.poll() is not None:
        # the leader is gone but members of its group (or its orphans) may not be
        _terminate_group(p.pid, timeout=min(timeout, 5), leader_alive=False)
        return
    _terminate_group(p.pid, timeout=timeout, popen=p)


# ------------------------------------------------------------------------------------------------------ CLI


def _write_json(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def cli_start(folder: Path) -> None:
    """Start PostgreSQL and a Prefect server, write ``services.json`` and ``services.env``, return."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    state_file = folder / "services.json"
    t0 = time.monotonic()
    pg = start_postgres(folder)
    state: dict[str, object] = {"postgres": pg.to_json(), "user": pg.user or pwd.getpwuid(os.geteuid())[0]}
    _write_json(state_file, state)  # written at once, so `stop` can clean up a start that dies half-way
    t1 = time.monotonic()
    try:
        server = start_prefect_server(pg.url, folder)
    except BaseException:
        pg.stop()
        raise
    state["prefect"] = server.to_json()
    _write_json(state_file, state)
    (folder / "services.env").write_text(
        f"export {ENV_PG_URL}={shlex.quote(pg.url)}\n"
        f"export {ENV_PREFECT_API_URL}={shlex.quote(server.api_url)}\n"
    )
    print(
        f"services: PostgreSQL {pg.url} ({t1 - t0:.1f} s), Prefect {server.api_url} "
        f"({time.monotonic() - t1:.1f} s); env in {folder / 'services.env'}",
        flush=True,
    )


def cli_stop(folder: Path) -> None:
    """Stop what ``cli_start`` left running in ``folder`` (nothing to do when there is no state)."""
    state_file = Path(folder) / "services.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        print(f"services: nothing to stop ({state_file} missing or unreadable)", flush=True)
        return
    if state.get("prefect"):
        PrefectServer.from_json(state["prefect"]).stop()
    if state.get("postgres"):
        Postgres.from_json(state["postgres"]).stop()
    state_file.unlink(missing_ok=True)
    print("services: stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m tools.services {start,stop} DIR``."""
    ap = argparse.ArgumentParser(
        prog="python -m tools.services", description=(__doc__ or "").split("\n\n")[0]
    )
    ap.add_argument("action", choices=["start", "stop"])
    ap.add_argument("dir", type=Path)
    args = ap.parse_args(argv)
    (cli_start if args.action == "start" else cli_stop)(args.dir)


if __name__ == "__main__":
    main()
