"""The team stack end to end, on loopback: S3 (SeaweedFS), MLflow on PostgreSQL, a Prefect server and worker.

One stack for the module (infra/local/stack.py `up`; its process groups are stopped in the finalizer):

1. copy A of the pipeline fixture: `art2mus remote s3` points DVC at the bucket, `dvc push`;
2. copy B without the DVC cache or any cached output: `art2mus retrain` against the stack pulls the data
   from S3 (its credentials only in .dvc/config.local), DVC skips every stage (the fixture trained), the
   model is registered through the MLflow server (runs and registry in PostgreSQL, artifacts in S3), the
   flow run is recorded by the Prefect server, and the champion loads back from the server and generates;
3. a push through a loopback proxy that SIGKILLs SeaweedFS right after the first object lands fails with a
   clear message; SeaweedFS restarts on the same data and ports; the push re-run completes; a pull into an
   empty cache gets every object back with its md5 (DVC names cache objects by it) verified.

No training: every copy reuses what the fixture's `dvc repro` produced.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from art2mus.storage import S3Settings, Transfer, list_keys, s3_store
from infra.local.stack import (
    CREDENTIALS_FILE,
    PG_DATABASE,
    PG_USER,
    Stack,
    base_env,
    down_services,
    kill_service,
    log_tail,
    save_state,
    start_s3,
    up,
    wait_for_writes,
)
from tests.helpers import BIN, project_env

pytestmark = pytest.mark.slow

BUCKET = "art2mus"
COMMAND_TIMEOUT = 600  # seconds, any one command of the module
RERUN_TIMEOUT = 300  # seconds for the push re-run (about 30 s when the store is healthy), so a failure reports
TIMINGS: dict[str, float] = {}


@dataclass
class TeamStack:
    stack: Stack
    access: str
    secret: str = field(repr=False)

    @property
    def s3(self) -> str:
        return self.stack.endpoints["s3"]

    def store(self):
        return s3_store(S3Settings(self.s3, access_key=self.access, secret_key=self.secret),
                        Transfer(max_attempts=3, connect_timeout=2, read_timeout=30))


def timed(name: str, started: float) -> None:
    TIMINGS[name] = time.monotonic() - started


def env_for(root: Path, team: TeamStack, s3_credentials: bool, **extra: str) -> dict[str, str]:
    """The project environment plus the stack's endpoints; S3 credentials only when asked for."""
    env = {key: value for key, value in project_env(root).items() if not key.startswith("AWS_")}
    env.update(MLFLOW_TRACKING_URI=team.stack.endpoints["mlflow"], PREFECT_API_URL=team.stack.endpoints["prefect"],
               **extra)
    if s3_credentials:
        env.update(AWS_ACCESS_KEY_ID=team.access, AWS_SECRET_ACCESS_KEY=team.secret)
    return env


def command(args: list[str], root: Path, env: dict[str, str], check: bool = True,
            timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


def dvc(root: Path, env: dict[str, str], *args: str, check: bool = True,
        timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    return command([str(BIN / "dvc"), *args], root, env, check, timeout)


def art2mus(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return command([str(BIN / "art2mus"), *args], root, env)


@pytest.fixture(scope="module")
def team() -> Iterator[TeamStack]:
    """The stack, with a key pair of its own; every process group it started is stopped at the end."""
    # Below a folder the `postgres` user can traverse (pytest's own temp root is private to us).
    state_dir = Path(tempfile.mkdtemp(prefix="art2mus-stack-"))
    state_dir.chmod(0o755)
    access, secret = f"team-{os.urandom(4).hex()}", os.urandom(18).hex()
    (state_dir / CREDENTIALS_FILE).write_text(f"AWS_ACCESS_KEY_ID={access}\nAWS_SECRET_ACCESS_KEY={secret}\n")
    (state_dir / CREDENTIALS_FILE).chmod(0o600)
    saved = {key: os.environ.pop(key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if key in os.environ}
    started = time.monotonic()
    stack = None
    try:
        stack = up(state_dir, BUCKET, "postgres")
        timed("stack up", started)
        for name, service in stack.services.items():
            TIMINGS[f"start-up {name}"] = service.seconds
        yield TeamStack(stack, access, secret)
    finally:
        os.environ.update(saved)
        if stack is not None:
            down_services(stack)
        shutil.rmtree(state_dir, ignore_errors=True)
        print("\nteam stack timings: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in TIMINGS.items()))


def copy_without(source: Path, destination: Path, skip_cache: bool) -> Path:
    """A copy of the pipeline project (optionally without its DVC cache), its tool state left behind."""
    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = set()
        if Path(folder) == source:
            skipped |= {"mlflow.db", "mlartifacts", ".prefect", ".dvcstore"} & set(names)
        if Path(folder) == source / ".dvc":
            skipped |= ({"cache", "tmp"} if skip_cache else {"tmp"}) & set(names)
        return skipped

    shutil.copytree(source, destination, symlinks=True, ignore=ignore)
    return destination


def cached_outputs(root: Path) -> list[Path]:
    """The outputs of dvc.lock that DVC keeps in its cache (and so pushes), by dvc.yaml's `cache` flags
    (on outs, metrics and plots)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    listed = []
    for stage in lock["stages"].values():
        listed.extend(Path(out["path"]) for out in stage.get("outs", []))
    uncached = set()
    for stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values():
        for out in [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]:
            if isinstance(out, dict):
                [(path, flags)] = out.items()
                if flags and flags.get("cache") is False:
                    uncached.add(path)
    # dvc.yaml paths may be templated (${...}); dvc.lock's are resolved: compare by the resolved list.
    resolved_uncached = {path for path in listed if any(same_template(path, pattern) for pattern in uncached)}
    return [path for path in listed if path not in resolved_uncached]


def same_template(path: Path, pattern: str) -> bool:
    """Whether dvc.lock's `path` is dvc.yaml's (possibly templated) `pattern`."""
    import re

    regex = re.escape(pattern)
    regex = re.sub(r"\\\$\\\{[^}]*\\\}", "[^/]+(?:/[^/]+)*", regex)
    return re.fullmatch(regex, str(path)) is not None


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Pushed:
    root: Path
    keys: list[str]
    output: str


@pytest.fixture(scope="module")
def pushed(team: TeamStack, pipeline_repo: Path, module_tmp: Path) -> Pushed:
    """Copy A: the S3 remote configured by `art2mus remote s3`, then `dvc push`."""
    root = copy_without(pipeline_repo, module_tmp / "a", skip_cache=False)
    env = env_for(root, team, s3_credentials=True)
    art2mus(root, env, "remote", "s3", BUCKET, "--prefix", "dvc", "--endpoint", team.s3)
    started = time.monotonic()
    result = dvc(root, env, "push")
    timed("dvc push", started)
    return Pushed(root, list_keys(team.store(), BUCKET, "dvc/"), result.stdout + result.stderr)


def test_the_remote_command_keeps_credentials_out_of_tracked_files(pushed: Pushed, team: TeamStack) -> None:
    config = (pushed.root / ".dvc" / "config").read_text()
    assert "remote = team" in config and f"url = s3://{BUCKET}/dvc" in config and f"endpointurl = {team.s3}" in config
    tracked = command(["git", "ls-files", "-z"], pushed.root, project_env(pushed.root)).stdout.split("\0")
    for name in filter(None, tracked):
        path = pushed.root / name
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert team.secret.encode() not in path.read_bytes(), name
    assert ".dvc/config.local" not in tracked


def test_push_puts_every_tracked_object_in_the_bucket(pushed: Pushed, team: TeamStack) -> None:
    assert pushed.keys and f"{len(pushed.keys)} files pushed" in pushed.output, pushed.output[-2000:]
    cache = pushed.root / ".dvc" / "cache" / "files" / "md5"
    local = {str(path.relative_to(cache)) for path in cache.rglob("*") if path.is_file()}
    assert {key.removeprefix("dvc/files/md5/") for key in pushed.keys} <= local
    status = dvc(pushed.root, env_for(pushed.root, team, s3_credentials=True), "status", "--cloud")
    assert "in sync" in status.stdout, status.stdout[-2000:]


@dataclass
class Retrained:
    root: Path
    output: str
    seconds: float


@pytest.fixture(scope="module")
def retrained(team: TeamStack, pushed: Pushed, pipeline_repo: Path, module_tmp: Path) -> Retrained:
    """Copy B: no DVC cache, no cached outputs, no local MLflow store; `art2mus retrain` against the stack."""
    root = copy_without(pipeline_repo, module_tmp / "b", skip_cache=True)
    for output in cached_outputs(root):
        target = root / output
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    setup = env_for(root, team, s3_credentials=True)
    art2mus(root, setup, "remote", "s3", BUCKET, "--prefix", "dvc", "--endpoint", team.s3, "--credentials-from-env")
    env = env_for(root, team, s3_credentials=False)  # DVC reads .dvc/config.local; MLflow's server holds S3's keys
    started = time.monotonic()
    result = subprocess.run([str(BIN / "art2mus"), "retrain"], cwd=root, env=env, capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT, check=False)
    timed("art2mus retrain", started)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return Retrained(root, output, TIMINGS["art2mus retrain"])


def test_the_flow_pulls_the_data_from_s3(retrained: Retrained, pushed: Pushed) -> None:
    assert "pulled from the DVC remote 'team'" in retrained.output, retrained.output[-4000:]
    for output in cached_outputs(retrained.root):
        assert (retrained.root / output).exists(), output
    assert (retrained.root / ".dvc" / "cache" / "files" / "md5").is_dir()
    ran = next(line for line in retrained.output.splitlines() if line.startswith("stages ran: "))
    assert not {"prior", "latents", "train", "evaluate"} & set(ran.removeprefix("stages ran: ").split(";")[0]
                                                              .split(", ")), ran


def test_runs_and_registry_live_in_postgresql(retrained: Retrained, team: TeamStack) -> None:
    import psycopg2

    port = team.stack.services["postgres"].ports["postgres"]
    with (contextlib.closing(psycopg2.connect(host="127.0.0.1", port=port, user=PG_USER, dbname=PG_DATABASE))
          as connection, connection.cursor() as cursor):
        cursor.execute("SELECT name FROM registered_models")
        assert ("art2mus",) in cursor.fetchall()
        cursor.execute("SELECT alias, version FROM registered_model_aliases WHERE name = 'art2mus'")
        assert dict(cursor.fetchall()) == {"champion": 1}
        cursor.execute("SELECT source FROM model_versions WHERE name = 'art2mus'")
        [(source,)] = cursor.fetchall()
        cursor.execute("SELECT status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                       "WHERE t.key = 'art2mus.stage' AND t.value = 'retrain'")
        assert cursor.fetchall() == [("FINISHED",)]
    assert "version 1 is the new champion" in retrained.output
    assert source.startswith(("models:/", "mlflow-artifacts:", "runs:/")), source


def test_model_artifacts_are_in_the_bucket(retrained: Retrained, team: TeamStack) -> None:
    keys = list_keys(team.store(), BUCKET, "mlartifacts/")
    assert any(key.endswith("/MLmodel") for key in keys), keys[:20]
    assert any(key.endswith(".safetensors") for key in keys), keys[:20]


def test_the_prefect_server_recorded_the_flow_run(retrained: Retrained, team: TeamStack) -> None:
    api = team.stack.endpoints["prefect"]
    request = urllib.request.Request(f"{api}/flow_runs/filter", data=json.dumps({"limit": 50}).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = json.loads(response.read())
    names = {}
    for run in runs:
        with urllib.request.urlopen(f"{api}/flows/{run['flow_id']}", timeout=30) as response:
            names[run["id"]] = (json.loads(response.read())["name"], run["state_type"])
    assert ("retrain", "COMPLETED") in names.values(), names


def test_the_champion_loads_back_from_the_server_and_generates(retrained: Retrained, team: TeamStack) -> None:
    # A fresh process with only the tracking URI: no S3 credentials, no project files.
    script = ("import mlflow, sys\n"
              "from art2mus.serving.pyfunc import input_example\n"
              "model = mlflow.pyfunc.load_model('models:/art2mus@champion')\n"
              "out = model.predict(input_example())\n"
              "print('generated', len(out), out['sample_rate'][0], round(float(out['seconds'][0]), 2))\n")
    home = Path(tempfile.mkdtemp(prefix="art2mus-client-"))
    try:
        env = {key: value for key, value in env_for(home, team, s3_credentials=False).items()}
        result = command([sys.executable, "-c", script], home, env)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert result.stdout.startswith("generated 1 16000 0.5"), result.stdout + result.stderr[-3000:]


class KillAfterFirstPut(http.server.BaseHTTPRequestHandler):
    """Forwards S3 requests to SeaweedFS; once the first PUT's answer is on its way back, kills SeaweedFS."""

    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int]
    on_first_put: Callable[[], None]
    tripped: threading.Event

    def log_message(self, format: str, *args) -> None:
        pass

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:size]
                if size == 0:
                    break
                body += chunk
            return body
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def forward(self) -> None:
        body = self.read_body()
        headers = {key: value for key, value in self.headers.items()
                   if key.lower() not in ("expect", "transfer-encoding", "connection")}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        try:
            upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
        except OSError:
            self.close_connection = True  # SeaweedFS is gone: drop the client's connection, as a crash would
            return
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()
        upstream.close()
        if self.command == "PUT" and response.status < 300 and not self.tripped.is_set():
            self.tripped.set()
            self.on_first_put()
            # From now on connections are refused, as by a dead server, so the push fails at once.
            self.close_connection = True
            self.server.shutdown()
            self.server.server_close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = forward


@contextlib.contextmanager
def crashing_proxy(upstream_port: int, on_first_put: Callable[[], None]) -> Iterator[tuple[str, threading.Event]]:
    """A loopback HTTP proxy in front of SeaweedFS; yields its URL and the event set when it pulled the plug."""
    tripped = threading.Event()
    handler = type("Handler", (KillAfterFirstPut,), {"upstream": ("127.0.0.1", upstream_port),
                                                    "on_first_put": staticmethod(on_first_put), "tripped": tripped})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tripped
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Crash:
    endpoint: str  # the proxy's, as DVC saw it
    failed: subprocess.CompletedProcess
    landed_before_restart: list[str]
    rerun: subprocess.CompletedProcess
    s3_log: str  # the restarted SeaweedFS's log after the re-run, for when it failed
    pulled_cache: Path
    remote_keys: list[str]


def push_within(root: Path, env: dict[str, str], seconds: float) -> subprocess.CompletedProcess:
    """`dvc push`, its output kept when it runs out of time (a failure to report, not an error of the fixture)."""
    try:
        return dvc(root, env, "push", check=False, timeout=seconds)
    except subprocess.TimeoutExpired as error:
        def text(output: bytes | str | None) -> str:
            return output.decode(errors="replace") if isinstance(output, bytes) else output or ""

        return subprocess.CompletedProcess(error.cmd, -9, text(error.stdout),
                                           f"{text(error.stderr)}\n(killed after {seconds:.0f} s)")


@pytest.fixture(scope="module")
def crash(team: TeamStack, pushed: Pushed, retrained: Retrained, module_tmp: Path) -> Crash:
    """Copy A pushes to a fresh prefix through the proxy; SeaweedFS dies after the first object; restart; re-push."""
    root = pushed.root
    env = env_for(root, team, s3_credentials=True)
    s3 = team.stack.services["s3"]
    with crashing_proxy(s3.ports["s3"], lambda: kill_service(s3)) as (proxy, tripped):
        art2mus(root, env, "remote", "s3", BUCKET, "--prefix", "crash", "--endpoint", proxy)
        started = time.monotonic()
        # One object at a time, and no botocore retries: the push fails as soon as the store is gone.
        failed = dvc(root, {**env, "AWS_MAX_ATTEMPTS": "1"}, "push", "--jobs", "1", check=False)
        timed("failed push", started)
    assert tripped.is_set(), failed.stdout + failed.stderr
    started = time.monotonic()
    restarted = start_s3(Path(team.stack.state_dir), base_env(), ports=s3.ports)
    team.stack.services["s3"] = restarted
    save_state(team.stack)
    timed("S3 restart", started)
    started = time.monotonic()
    wait_for_writes(restarted, Path(team.stack.state_dir), BUCKET)  # fails naming SeaweedFS's log
    timed("S3 takes writes", started)
    landed = list_keys(team.store(), BUCKET, "crash/")
    art2mus(root, env, "remote", "s3", BUCKET, "--prefix", "crash", "--endpoint", team.s3)
    started = time.monotonic()
    rerun = push_within(root, env, RERUN_TIMEOUT)
    timed("push re-run", started)
    s3_log = log_tail(restarted, 60)
    empty_cache = module_tmp / "empty-cache"
    empty_cache.mkdir()
    if rerun.returncode == 0:  # else the tests report the re-run's output and SeaweedFS's log
        dvc(root, env, "cache", "dir", "--local", str(empty_cache))
        started = time.monotonic()
        dvc(root, env, "pull")
        timed("pull into an empty cache", started)
    return Crash(proxy, failed, landed, rerun, s3_log, empty_cache, list_keys(team.store(), BUCKET, "crash/"))


def test_a_push_cut_off_by_the_store_fails_clearly(crash: Crash) -> None:
    output = crash.failed.stdout + crash.failed.stderr
    assert crash.failed.returncode != 0, output[-3000:]
    # DVC names what failed and why: the store stopped answering at the remote's endpoint.
    assert "ERROR: failed to transfer" in output, output[-3000:]
    assert f'Could not connect to the endpoint URL: "{crash.endpoint}/{BUCKET}/crash/files/md5/' in output, output[-3000:]
    assert len(crash.landed_before_restart) >= 1  # the first object landed before the plug was pulled


def test_the_rerun_push_completes_and_every_pulled_object_matches_its_md5(crash: Crash, pushed: Pushed) -> None:
    assert crash.rerun.returncode == 0, (f"{(crash.rerun.stdout + crash.rerun.stderr)[-3000:]}\n"
                                         f"SeaweedFS's log ends:\n{crash.s3_log}")
    objects = [path for path in (crash.pulled_cache / "files" / "md5").rglob("*") if path.is_file()]
    names = sorted(f"{path.parent.name}/{path.name}" for path in objects)
    expected = sorted(key.removeprefix("dvc/files/md5/") for key in pushed.keys)
    assert names == expected == sorted(key.removeprefix("crash/files/md5/") for key in crash.remote_keys)
    for path in objects:
        assert md5_of(path) == path.parent.name + path.name.removesuffix(".dir"), path
