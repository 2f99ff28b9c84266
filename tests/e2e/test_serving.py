"""A real `mlflow models serve` of the champion answers an image with a WAV and refuses a file path."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mlflow import MlflowClient

from art2mus.serving.pyfunc import example_image_base64
from art2mus.tracking.registry import MODEL_NAME, Lineage, promote, register_model
from tests.conftest import BIN, free_port, project_env, stop
from tests.tiny_model import build_tiny_model

pytestmark = pytest.mark.slow
STARTUP_TIMEOUT = 300  # seconds: the server imports torch and loads the model before /ping answers


def wait_until_up(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    raise AssertionError(f"the server did not answer {url} within {STARTUP_TIMEOUT}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, registered identity) of a server running models:/art2mus-aligner@champion."""
    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        model = build_tiny_model(root / "parts")
        registered = register_model(model, {"weights_sha256": "e2e" + "0" * 61, "prior": "tiny"},
                                    Lineage(git_commit="e2e"), client=client, root=root)
        promote(registered.version, by="tests", reason="serving test", client=client)
    port = free_port()
    log = root / "server.log"
    with open(log, "w") as output:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            cwd=root, env={**project_env(root), "MLFLOW_TRACKING_URI": uri}, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, log)
        yield f"http://127.0.0.1:{port}", registered.identity
    finally:
        stop(server)


def invoke(base_url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base_url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_champion_answers_an_image_with_a_wav(served: tuple[str, str]) -> None:
    base_url, identity = served
    status, body = invoke(base_url, {"dataframe_records": [{"image": example_image_base64(), "seconds": 0.5,
                                                            "steps": 2, "seed": 1}]})
    assert status == 200, body
    [row] = body["predictions"]
    wave, rate = sf.read(io.BytesIO(base64.b64decode(row["wav_base64"])), dtype="float32")
    assert rate == row["sample_rate"] == 16000 and len(wave) == 8000 and row["seconds"] == 0.5
    assert np.isfinite(wave).all() and 0 < np.abs(wave).max() <= 1.0
    assert row["model_identity"] == identity


def test_a_file_path_is_refused_with_a_clear_400(served: tuple[str, str]) -> None:
    base_url, _ = served
    status, body = invoke(base_url, {"dataframe_records": [{"image": "/etc/passwd"}]})
    assert status == 400, body
    assert "looks like a file path" in body["message"] and "never reads files" in body["message"]
    status, body = invoke(base_url, {"dataframe_split": {"columns": ["image"],
                                                         "data": [[base64.b64encode(b"plain text").decode()]]}})
    assert status == 400 and "not a decodable image" in body["message"]
