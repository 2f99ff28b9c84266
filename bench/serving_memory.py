"""Serving memory under hostile requests, against a real `mlflow models serve`.

Target (issue 12): the server's RSS after 20 hostile requests at most its RSS after one benign request
+ 150 MB. The server is `mlflow models serve` (one worker, `--env-manager local`) of a tiny untrained
art2mus model registered in a temporary tracking store; RSS is the whole process tree's (the `mlflow`
command and its worker), read from /proc a second after each phase.

- benign: one row, the 32 x 32 example image, 2 steps, half a second.
- hostile, alternately (10 of each): four 9,400 x 9,400 greyscale PNGs in one request (86 KB each: the
  issue's 458 KB request), and 64 rows of a 2,048 x 2,048 PNG whose last row is invalid (steps 0), so
  a server that decodes every row before checking the last one pays for all of them and generates nothing.
- largest accepted (reported, no target): two requests of two rows at the pixel cap (4,096 x 4,096),
  1 step: the memory a legitimate large request leaves behind.

The source tree measured is the one this file is in (its `art2mus` goes first on the server's
PYTHONPATH), so a `git worktree` of an older commit measures the older code: copy this file there and
run `python -m bench.serving_memory` from it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from functools import cache
from pathlib import Path

from art2mus.processes import stop_process_group

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET_MB = 150.0  # RSS after the hostile requests at most this much above RSS after the benign one
HOSTILE_REQUESTS = 20
STARTUP_TIMEOUT = 300  # seconds: the server imports torch and loads the model before /ping answers
REQUEST_TIMEOUT = 600
SETTLE_SECONDS = 1.0


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@cache
def blank_png(width: int, height: int, pixels: bool = True) -> bytes:
    """A black 8-bit greyscale PNG, compressed row by row (never whole in memory): 9,400 x 9,400 is 86 KB
    and decodes to 88 MB (265 MB as RGB). pixels=False: the header alone (no decoder can make an image of it)."""
    body = b""
    if pixels:
        compressor, row = zlib.compressobj(9), bytes(1 + width)  # filter byte + one byte a pixel
        body = png_chunk(b"IDAT", b"".join([compressor.compress(row) for _ in range(height)] + [compressor.flush()]))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + body + png_chunk(b"IEND", b"")


def png_base64(width: int, height: int) -> str:
    return base64.b64encode(blank_png(width, height)).decode("ascii")


def huge_images_request(images: int = 4, side: int = 9400) -> dict:
    """`images` rows of a side x side PNG (the issue's request: four 9,400 x 9,400 in 458 KB)."""
    return {"dataframe_records": [{"image": png_base64(side, side), "seconds": 0.5, "steps": 1}] * images}


def many_rows_request(rows: int = 64, side: int = 2048) -> dict:
    """`rows` rows of a side x side PNG, the last one invalid (steps 0): nothing may be generated."""
    records = [{"image": png_base64(side, side), "seconds": 0.5, "steps": 1} for _ in range(rows)]
    records[-1]["steps"] = 0
    return {"dataframe_records": records}


def benign_request() -> dict:
    from art2mus.serving.pyfunc import example_image_base64

    return {"dataframe_records": [{"image": example_image_base64(), "seconds": 0.5, "steps": 2, "seed": 1}]}


def hostile_requests(count: int = HOSTILE_REQUESTS) -> list[dict]:
    """`count` hostile requests, alternately four huge images and many rows."""
    return [huge_images_request() if number % 2 == 0 else many_rows_request() for number in range(count)]


def invoke(base_url: str, payload: dict, timeout: float = REQUEST_TIMEOUT) -> tuple[int, dict]:
    """(HTTP status, JSON body) of a POST to /invocations."""
    request = urllib.request.Request(f"{base_url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def children(pid: int) -> list[int]:
    """The direct children of a process (Linux: /proc/PID/task/*/children)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB (VmRSS from /proc)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
        pending += children(current)
    return total


def settled_rss_mb(pid: int) -> float:
    time.sleep(SETTLE_SECONDS)
    return tree_rss_mb(pid)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(root: Path, uri: str) -> dict[str, str]:
    """The project's environment for the server, this source tree first on its PYTHONPATH."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "PREFECT_", "DVC_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", MLFLOW_TRACKING_URI=uri,
               MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                                         env.get("PYTHONPATH")])))
    return env


def register_tiny_model(root: Path, uri: str) -> str:
    """A tiny untrained model registered in `uri` (run in a child process, in `root`); its models:/ URI."""
    script = f"""
import sys
from art2mus.config import AudioParams, BackboneParams, EncoderSpec
from art2mus.models.aligner import ImageAligner
from art2mus.models.encoders import build_tiny_image_encoder
from art2mus.models.pipeline import save_model
from art2mus.models.tiny import build_tiny_backbone, save_tiny_backbone
from art2mus.tracking.lineage import Lineage
from art2mus.tracking.registry import MODEL_NAME, register_model
from mlflow import MlflowClient
from pathlib import Path

root = Path.cwd()
backbone = build_tiny_backbone(BackboneParams(), AudioParams(), seed=0)
save_tiny_backbone(backbone, root / "parts" / "prior")
encoder = build_tiny_image_encoder()
aligner = ImageAligner(image_dim=encoder.dim, lm_width=backbone.lm_width, tokens=4, hidden_dim=32)
save_model(root / "parts" / "art2mus", aligner, root / "parts" / "prior", EncoderSpec(name="tiny"), {{"note": "bench"}})
registered = register_model(root / "parts" / "art2mus", {{"weights_sha256": "bench" + "0" * 59, "prior": "tiny"}},
                            Lineage(git_commit="bench"), client=MlflowClient(tracking_uri={uri!r}), root=root)
print(f"models:/{{MODEL_NAME}}/{{registered.version}}")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env=server_env(root, uri), capture_output=True,
                            text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"serving memory bench: registering the tiny model failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def start_server(root: Path, model_uri: str, uri: str) -> tuple[subprocess.Popen, str]:
    """`mlflow models serve` of the model, answering /ping; (process, base URL)."""
    port = free_port()
    log = root / "server.log"
    with open(log, "w") as output:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1",
             "-p", str(port), "-w", "1"],
            cwd=root, env=server_env(root, uri), stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"serving memory bench: the server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/ping", timeout=5) as response:
                if response.status == 200:
                    return server, base_url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    stop_process_group(server, grace=60)
    raise RuntimeError(f"serving memory bench: no answer within {STARTUP_TIMEOUT}s:\n{log.read_text()[-3000:]}")


def measure(base_url: str, pid: int, hostile: int, largest_accepted: int) -> dict:
    """RSS of the server tree after the benign request, the hostile ones and the largest accepted ones."""
    status, body = invoke(base_url, benign_request())
    if status != 200:
        raise RuntimeError(f"serving memory bench: the benign request failed ({status}): {body}")
    benign = settled_rss_mb(pid)
    answers: dict[str, int] = {}
    started = time.perf_counter()
    for payload in hostile_requests(hostile):
        status, body = invoke(base_url, payload)
        answers[str(status)] = answers.get(str(status), 0) + 1
        message = str(body.get("message", "")).rpartition("Error: ")[2]  # MLflow puts the data's repr first
        logger.info("hostile request: HTTP %s %s (RSS %.0f MB)", status, message[:160], tree_rss_mb(pid))
    hostile_seconds = time.perf_counter() - started
    after_hostile = settled_rss_mb(pid)
    cap_side = 4096  # ServingParams().max_pixels = 4,096 x 4,096
    accepted = {"dataframe_records": [{"image": png_base64(cap_side, cap_side), "seconds": 0.5, "steps": 1}] * 2}
    accepted_status = [invoke(base_url, accepted)[0] for _ in range(largest_accepted)]
    return {"rss_after_benign_mb": benign, "rss_after_hostile_mb": after_hostile,
            "hostile_minus_benign_mb": after_hostile - benign, "hostile_vs_benign": after_hostile / benign,
            "hostile_requests": hostile, "hostile_answers": answers, "hostile_seconds": hostile_seconds,
            "largest_accepted_requests": largest_accepted, "largest_accepted_answers": accepted_status,
            "rss_after_largest_accepted_mb": settled_rss_mb(pid)}


def run(quick: bool = False) -> dict:
    """quick: 4 hostile requests and no largest-accepted ones (checks the benchmark itself)."""
    hostile, largest_accepted = (4, 0) if quick else (HOSTILE_REQUESTS, 2)
    with tempfile.TemporaryDirectory(prefix="art2mus-bench-serving-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root}/mlflow.db"
        model_uri = register_tiny_model(root, uri)
        server, base_url = start_server(root, model_uri, uri)
        try:
            figures = measure(base_url, server.pid, hostile, largest_accepted)
        finally:
            stop_process_group(server, grace=60)
    after, allowed = figures["rss_after_hostile_mb"], figures["rss_after_benign_mb"] + TARGET_MB
    return {"benchmark": "serving_memory", "source": str(ROOT), **figures,
            "goals": {"rss_after_hostile_mb": {"value": after, "target": allowed, "met": bool(after <= allowed)}}}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(run(quick=parser.parse_args().quick), indent=2))
