"""Failure alerts of the retrain flow, delivered to a local HTTP receiver on 127.0.0.1.

The failing runs are cheap: a project copy whose DVC config names a default remote it does not
define fails the first task (`sync data`) at once, and a retrain that waits for a project lock held
by the test outlives a tiny flow timeout. Neither needs the pipeline. The successful run is a first
retrain on a copy of the pipeline fixture (register, decide, promote: no training).

Every run is a real `art2mus retrain` process: the failed one against a Prefect server on 127.0.0.1
(the team setup: the block is saved on the server), the others on Prefect's ephemeral mode (the
embedded default).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from prefect import task
from prefect.states import Failed

from art2mus.alerts import compose_alert, failing_step, send_alert
from art2mus.config import AlertsParams
from art2mus.errors import Art2MusError
from tests.helpers import BIN, copy_project, project_env

slow = pytest.mark.slow
RUN_TIMEOUT = 600
FLOW_RUN_NAME = re.compile(r"Beginning flow run '([^']+)'")


@dataclass
class Receiver:
    url: str
    posts: list[dict] = field(default_factory=list)


class CollectingHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts.append({"path": self.path, **json.loads(body)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An HTTP server on 127.0.0.1 that keeps every JSON body posted to it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), CollectingHandler)
    server.posts = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}/art2mus", server.posts)
    finally:
        server.shutdown()
        server.server_close()


def closed_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (bound, then released)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), CollectingHandler)
    port = server.server_address[1]
    server.server_close()
    return f"http://127.0.0.1:{port}/art2mus"


# --- fast: the message itself, from a real Prefect failure in this process --------------------------------


@task(name="fetch data")
def fetch_data() -> None:
    raise Art2MusError("data/raw.csv: zero bytes\n(and a second line)")


def failing_flow_body() -> None:
    fetch_data.fn()  # the task's own function: the same code object a flow's task run executes


def test_the_alert_names_the_run_the_project_the_step_and_the_errors_first_line(tmp_path: Path) -> None:
    try:
        failing_flow_body()
    except Art2MusError as error:
        caught = error
    fake_flow = SimpleNamespace(name="retrain", fn=failing_flow_body)
    assert failing_step(caught, fake_flow) == "fetch data"
    run = SimpleNamespace(name="brave-otter", id="0000-1", deployment_id=None, parameters={"project_dir": str(tmp_path)})
    alert = compose_alert(fake_flow, run, Failed(data=caught, message="Flow run encountered an exception"), tmp_path)
    assert alert.subject == f"art2mus retrain FAILED: flow run 'brave-otter' ({tmp_path.name})"
    assert f"project: {tmp_path.name} ({tmp_path})" in alert.body
    assert "flow run: brave-otter (id 0000-1)" in alert.body
    assert "failing step: fetch data" in alert.body
    assert "error: Art2MusError: data/raw.csv: zero bytes" in alert.body and "second line" not in alert.body
    timed_out = compose_alert(fake_flow, run, Failed(name="TimedOut", message="Flow run exceeded timeout of 3 second(s)",
                                                     data=TimeoutError("Scope timed out")), tmp_path)
    assert "TIMED OUT" in timed_out.subject and "timed out" in timed_out.body
    assert "error: Flow run exceeded timeout of 3 second(s)" in timed_out.body


def test_an_undeliverable_alert_is_a_clear_error_and_no_destination_says_so(receiver: Receiver,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from art2mus.alerts import Alert

    monkeypatch.setenv("ART2MUS_TEST_HOOK", closed_url())
    with pytest.raises(Art2MusError, match=r"the webhook in \$ART2MUS_TEST_HOOK did not take the alert: ConnectError"):
        send_alert(Alert("s", "b"), AlertsParams(block="", webhook_env="ART2MUS_TEST_HOOK"))
    with pytest.raises(Art2MusError, match="alerts are off"):
        send_alert(Alert("s", "b"), AlertsParams(block="", webhook_env="ART2MUS_UNSET_VARIABLE"))
    with pytest.raises(Art2MusError, match="alerts.block must be '<block type>/<block name>'"):
        send_alert(Alert("s", "b"), AlertsParams(block="no-slash", webhook_env=""))
    monkeypatch.setenv("ART2MUS_TEST_HOOK", receiver.url)
    assert send_alert(Alert("subject", "body"), AlertsParams(webhook_env="ART2MUS_TEST_HOOK")) == \
        "the webhook in $ART2MUS_TEST_HOOK"
    assert receiver.posts == [{"path": "/art2mus", "subject": "subject", "body": "body", "text": "subject\nbody"}]


# --- real retrain processes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's files (no pipeline outputs), copied once per module."""
    return copy_project(tmp_path_factory.mktemp("alerts") / "source", {})


def project(source: Path, destination: Path, remote: str = "local") -> Path:
    """A copy of `source` whose DVC default remote is `remote` (an undefined one fails `sync data`)."""
    shutil.copytree(source, destination, symlinks=True)
    config = destination / ".dvc" / "config"
    config.write_text(config.read_text().replace("remote = local", f"remote = {remote}"))
    return destination


def art2mus(root: Path, *arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "art2mus"), *arguments], cwd=root, env={**project_env(root), **(env or {})},
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)


def flow_run_name(output: str) -> str:
    match = FLOW_RUN_NAME.search(output)
    assert match, output[-3000:]
    return match.group(1)


@slow
def test_a_failed_retrain_sends_exactly_one_alert_through_the_prefect_block(source_copy: Path, receiver: Receiver,
                                                                            prefect_api: str, tmp_path: Path) -> None:
    root = project(source_copy, tmp_path / "project", remote="nowhere")
    server = {"PREFECT_API_URL": prefect_api}
    saved = art2mus(root, "alerts", "webhook", receiver.url, env=server)
    assert saved.returncode == 0 and "saved the Prefect block custom-webhook/art2mus-alerts" in saved.stdout, \
        saved.stdout + saved.stderr
    tested = art2mus(root, "alerts", "test", env=server)
    assert tested.returncode == 0 and "sent a test alert to the Prefect block" in tested.stdout, tested.stderr
    assert [post["subject"] for post in receiver.posts] == ["art2mus test alert (project)"]
    receiver.posts.clear()
    run = art2mus(root, "retrain", "--wait", "0", env=server)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output[-3000:]
    assert f"{root / '.dvc' / 'config'}: the default remote 'nowhere' is not defined" in output  # not masked
    [post] = receiver.posts
    name = flow_run_name(output)
    assert post["subject"] == f"art2mus retrain FAILED: flow run '{name}' (project)"
    body = post["body"].splitlines()
    assert body[0] == f"art2mus: the retrain flow run '{name}' failed."
    assert f"project: project ({root})" in body
    assert "failing step: sync data" in body
    assert f"error: Art2MusError: {root / '.dvc' / 'config'}: the default remote 'nowhere' is not defined" in body
    assert "alert sent to the Prefect block custom-webhook/art2mus-alerts" in output


@slow
def test_a_timed_out_retrain_says_so_and_an_undeliverable_alert_does_not_mask_it(source_copy: Path,
                                                                                 receiver: Receiver,
                                                                                 tmp_path: Path) -> None:
    from filelock import FileLock

    root = project(source_copy, tmp_path / "project")
    # The flow waits for the project lock the test holds; a 5 s flow timeout ends the wait first.
    # Run in the project (python -c puts the working directory first on sys.path), as `art2mus retrain` runs
    # `python -m flows.retrain`.
    script = ("from pathlib import Path; from art2mus.env import configure_environment; "
              "root = configure_environment(Path.cwd()); from flows.retrain import retrain; "
              "retrain.with_options(timeout_seconds=5)(project_dir=str(root), wait_seconds=120)")
    saved = art2mus(root, "alerts", "webhook", receiver.url)  # ephemeral mode: the block goes to .prefect/
    assert saved.returncode == 0, saved.stdout + saved.stderr
    lock = root / ".dvc" / "tmp" / "art2mus-retrain.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    results = {}
    with FileLock(lock):
        # Delivered through the saved block; then a webhook URL in the environment wins, and nothing answers there.
        for label, variables in (("delivered", {}), ("undeliverable", {"ART2MUS_ALERT_WEBHOOK": closed_url()})):
            started = time.monotonic()
            results[label] = subprocess.run(
                [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                env={**project_env(root), **variables, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"},
                check=False)
            assert time.monotonic() - started < 110  # the timeout ended the run, not the lock wait
    delivered = results["delivered"].stdout + results["delivered"].stderr
    assert results["delivered"].returncode != 0 and "Flow run exceeded timeout of 5" in delivered, delivered[-3000:]
    [post] = receiver.posts
    name = flow_run_name(delivered)
    assert post["subject"] == f"art2mus retrain TIMED OUT: flow run '{name}' (project)"
    assert f"the retrain flow run '{name}' timed out." in post["body"]
    assert "failing step: project_lock (in the retrain flow, outside any task)" in post["body"]
    assert "error: Flow run exceeded timeout of 5" in post["body"]
    assert "alert sent to the Prefect block custom-webhook/art2mus-alerts" in delivered
    undeliverable = results["undeliverable"].stdout + results["undeliverable"].stderr
    assert results["undeliverable"].returncode != 0, undeliverable[-3000:]
    assert "Finished in state TimedOut('Flow run exceeded timeout of 5" in undeliverable
    assert "alert not delivered: the webhook in $ART2MUS_ALERT_WEBHOOK did not take the alert: ConnectError" \
        in undeliverable
    assert len(receiver.posts) == 1


@slow
def test_a_successful_retrain_sends_no_alert(pipeline_repo: Path, receiver: Receiver, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(pipeline_repo, root, symlinks=True)
    run = art2mus(root, "retrain", env={"ART2MUS_ALERT_WEBHOOK": receiver.url})
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "is the new champion" in run.stdout
    assert receiver.posts == []
