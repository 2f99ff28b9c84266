"""The full-size rehearsal: the real retrain flow on the real profile, with random weights of the real configs.

`make rehearse` (`--mode full`) and `make rehearse-ci` (`--mode ci`): a user proves the whole real path on
their own machine before spending GPU hours. It

1. builds cvssp/audioldm2-music's parts and CLIP ViT-L/14's vision tower at full size from the configs in
   `art2mus/rehearsal/configs/` (seeded random weights, stored fp16, with the real checkpoints' quirks),
   cached in the work folder;
2. copies the project with a params overlay: `backbone.profile: audioldm2` and `source` at that folder, CLIP
   as the image encoder, a sample with tracks longer than the 10 s offset + 10.24 s crop, the gates'
   minimums lowered to the sample's size, a few optimizer steps with accumulation and checkpointing, a
   small evaluation with the caption baseline; the first-run promotion floor is lowered to 0 (a random-weight
   model cannot pass it: the report says so);
3. runs each DVC stage (`dvc repro -s`), measuring its wall seconds and peak memory (the stage's process
   tree), then the real retrain flow (`art2mus retrain`: sync, gates, register, decide, promote);
4. serves the champion with `mlflow models serve` and sends it one request;
5. embeds the same artworks with ImageBind-huge (1.2 B parameters, built at full size), alone;
6. in full mode, runs the model part (`art2mus.rehearsal.model_part`: training memory with and without
   checkpointing, generation speed, the batch plan) and merges its figures;
and writes `<out>/rehearsal.json` and `<out>/rehearsal.md`.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from art2mus.config import EncoderSpec
from art2mus.processes import stop_process_group
from art2mus.rehearsal.project import copy_project, project_env
from art2mus.tracking.registry import CHAMPION_URI

STAGES = ("sample", "ingest", "validate_raw", "features", "pair", "split", "validate_splits", "prior", "latents",
          "train", "evaluate")
BUILD_STAMP = "built.json"
SERVE_TIMEOUT = 900  # seconds for the server to import torch and load the full-size model
STEP_TIMEOUT = 3600  # seconds any one step may take before it is taken for a hang
REQUEST_TIMEOUT = 1800


@dataclass
class Measured:
    """One command: how long it took, its process tree's peak memory, how it ended."""

    name: str
    seconds: float
    peak_rss_mib: float
    returncode: int

    def row(self) -> str:
        return f"| {self.name} | {self.seconds:,.1f} | {self.peak_rss_mib:,.0f} | {'ok' if self.returncode == 0 else 'FAILED'} |"


class RehearsalFailed(RuntimeError):
    """A step of the rehearsal failed; the message holds the end of its output."""


def run_measured(name: str, command: list[str], cwd: Path, env: dict[str, str], log: Path,
                 timeout: float = STEP_TIMEOUT) -> Measured:
    """Run `command`, its output appended to `log`: wall seconds and the peak RSS of its process tree.

    The peak comes from a small launcher process (`measure`): a child forked from this process would
    start with this process's RSS as its peak, so the launcher, freshly exec'd, forks the command.
    """
    usage_file = Path(tempfile.mkstemp(suffix=".json")[1])
    launcher = [sys.executable, "-m", "art2mus.rehearsal.flow", "measure", str(usage_file), "--", *command]
    started = time.monotonic()
    with open(log, "a") as output:
        output.write(f"\n==== {name}: {' '.join(command)}\n")
        output.flush()
        process = subprocess.Popen(launcher, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise RehearsalFailed(f"{name} did not finish within {timeout:.0f} s; see {log}") from None
    seconds = time.monotonic() - started
    usage = json.loads(usage_file.read_text() or "{}")
    usage_file.unlink(missing_ok=True)
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise RehearsalFailed(f"{name} failed ({process.returncode}); the end of {log}:\n{tail}")
    return Measured(name, seconds, usage["peak_rss_mib"], process.returncode)


def measure(usage_file: Path, command: list[str]) -> int:
    """(Launcher) run `command`; write the peak RSS of its process tree (wait4: the child and every
    descendant it waited for) to `usage_file`; exit with its code."""
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    usage_file.write_text(json.dumps({"peak_rss_mib": usage.ru_maxrss / 1024, "returncode": code}) + "\n")
    return code


def built_parts(hub: Path, size: str = "real") -> dict[str, Path]:
    """The random-weight checkpoints (AudioLDM2-music, CLIP ViT-L/14, ImageBind-huge; `tiny`: the same
    layouts at toy sizes, to check the rehearsal itself), built once per size."""
    from art2mus.rehearsal import checkpoints  # torch, diffusers: only to build the parts (the driver stays light)

    hub = hub / size
    parts = {"audioldm2": hub / "audioldm2-music", "clip": hub / "clip-vit-large-patch14",
             "imagebind": hub / "imagebind_huge.pth"}
    recipe = {"size": size, "seed": 0, "store_dtype": "float16"}
    stamp = hub / BUILD_STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe and all(p.exists() for p in parts.values()):
        return parts
    import torch

    hub.mkdir(parents=True, exist_ok=True)
    checkpoints.save_audioldm2(parts["audioldm2"], size=size, seed=0, store_dtype=torch.float16)
    checkpoints.save_clip_vision(parts["clip"], size=size, seed=0, store_dtype=torch.float16)
    checkpoints.save_imagebind_checkpoint(parts["imagebind"], size=size, seed=0, store_dtype=torch.float16)
    stamp.write_text(json.dumps(recipe) + "\n")
    return parts


def overlay(mode: str, parts: dict[str, Path]) -> dict[str, Any]:
    """The params the rehearsal changes: the real profile and encoder, and sizes that prove each claim."""
    small = mode == "ci"
    artworks, artists = (12, 6) if small else (40, 10)
    return {
        "backbone": {"profile": "audioldm2", "source": str(parts["audioldm2"])},
        "features": {"image_encoder": {"name": "clip", "source": str(parts["clip"])}, "batch_size": 4},
        "sample": {"n_artworks": artworks, "n_artists": artists, "n_extra_tracks": 0, "image_size": 64},
        "validate_raw": {"min_artworks": 8, "min_tracks": 8},
        "validate_splits": {"min_pairs_per_split": {"train": 4, "val": 0, "test": 2}},  # val is not used here
        "train": {"steps": 2 if small else 3, "batch_size": 2 if small else 4, "grad_accum": 2,
                  "checkpoint_every": 1},
        "evaluate": {"k": 2, "draws": 1, "untrained_seeds": [1], "steps": 1 if small else 3, "guidance_scale": 3.5,
                     "max_items": 2 if small else 4, "generate": ["trained"], "planted_tracks": 0,
                     "fad_resamples": 0, "report_items": 2, "batch_size": 2},
        # A random-weight model cannot clear the first-run floor; the rehearsal proves the path, not the model.
        "promotion": {"floors": {"retrieval_top1": 0.0}, "resamples": 200},
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def example_image_base64() -> str:
    """A small PNG painting for the served request."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (180, 60, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def serve_one_request(project: Path, env: dict[str, str], log: Path, steps: int) -> dict[str, Any]:
    """Start `mlflow models serve` on the champion, send one image, check the WAV; seconds for each part."""
    import soundfile as sf

    port = free_port()
    started = time.monotonic()
    with open(log, "a") as output:
        output.write(f"\n==== serve {CHAMPION_URI} on 127.0.0.1:{port}\n")
        output.flush()
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", CHAMPION_URI, "--env-manager",
             "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1", "-t", str(REQUEST_TIMEOUT)],
            cwd=project, env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db"}, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if server.poll() is not None:
                raise RehearsalFailed(f"the server exited ({server.returncode}); see {log}")
            if time.monotonic() - started > SERVE_TIMEOUT:
                raise RehearsalFailed(f"the server did not answer within {SERVE_TIMEOUT} s; see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        ready = time.monotonic() - started
        payload = {"dataframe_records": [{"image": example_image_base64(), "steps": steps, "seed": 0}]}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        sent = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise RehearsalFailed(f"the served model answered {error.code}: {error.read()[:2000]!r}") from None
        answered = time.monotonic() - sent
        row = body["predictions"][0]
        wave, rate = sf.read(io.BytesIO(base64.b64decode(row["wav_base64"])), dtype="float32")
        return {"startup_seconds": ready, "request_seconds": answered, "steps": steps, "sample_rate": rate,
                "samples": len(wave), "seconds": len(wave) / rate, "model_identity": row["model_identity"]}
    finally:
        stop_process_group(server, grace=60)


def embed_with_imagebind(checkpoint: Path, images: list[Path], out: Path) -> None:
    """(Child process) embed `images` with ImageBind-huge from `checkpoint`; write the figures to `out`."""
    from PIL import Image

    from art2mus.models.encoders import load_image_encoder  # torch: only in this child process

    started = time.monotonic()
    encoder = load_image_encoder(EncoderSpec(name="imagebind", source=str(checkpoint)))
    built = time.monotonic() - started
    started = time.monotonic()
    embeddings = encoder.embed_images([Image.open(path).convert("RGB") for path in images])
    out.write_text(json.dumps({"load_seconds": built, "embed_seconds": time.monotonic() - started,
                               "images": len(images), "dim": int(embeddings.shape[1]),
                               "unit_norm": bool(abs(float(embeddings.norm(dim=1).mean()) - 1) < 1e-3)}) + "\n")


def parameter_counts() -> dict[str, int]:
    """Every part at full size, counted without weights."""
    from art2mus.rehearsal.checkpoints import empty_parameter_counts  # torch, diffusers: only when counting

    return empty_parameter_counts("real")


def rehearse(mode: str, work: Path, out: Path, source: Path, size: str = "real") -> dict[str, Any]:
    """Run the rehearsal; the figures as a dict (also written to `out`)."""
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "rehearsal.log"
    log.write_text("")
    started = time.monotonic()
    build_started = time.monotonic()
    parts = built_parts(work / "hub", size)
    build_seconds = time.monotonic() - build_started
    project = work / f"project-{mode}"
    if project.exists():
        shutil.rmtree(project)
    changes = overlay(mode, parts)
    copy_project(source, project, changes)
    env = project_env(project)
    dvc = str(Path(sys.executable).parent / "dvc")
    stages = [run_measured(stage, [dvc, "repro", "-s", stage], project, env, log) for stage in STAGES]
    art2mus = str(Path(sys.executable).parent / "art2mus")
    flow = run_measured("retrain flow (register, decide, promote)", [art2mus, "retrain"], project, env, log)
    serving = serve_one_request(project, env, log, steps=changes["evaluate"]["steps"])
    images = sorted((project / "data" / "sample" / "artgraph" / "imagesf2").glob("*"))[:2]
    imagebind_out = work / "imagebind.json"
    imagebind = run_measured(
        "imagebind-huge (2 artworks)",
        [sys.executable, "-m", "art2mus.rehearsal.flow", "embed-imagebind", str(parts["imagebind"]),
         str(imagebind_out), *map(str, images)], project, env, log)
    metrics = json.loads((project / "reports" / "evaluate" / "metrics.json").read_text())
    report: dict[str, Any] = {
        "mode": mode, "size": size, "device": "cpu", "total_seconds": None, "build_seconds": build_seconds,
        "overlay": changes,
        "note": "random weights built from the real configs: the figures are costs, not quality; the first-run "
                "promotion floor (retrieval_top1) is lowered to 0 for the rehearsal (a random-weight model cannot "
                "pass it)",
        "stages": [asdict(item) for item in stages], "flow": asdict(flow), "serving": serving,
        "imagebind": {**asdict(imagebind), **json.loads(imagebind_out.read_text())},
        "parameters": parameter_counts() if size == "real" else {},
        "evaluation": {"items": metrics["items"], "rows": sorted(metrics["generation"]),
                       "caption_baseline": metrics["caption_baseline"]["status"]},
    }
    if mode == "full" and size == "real":
        model_out = out / "model_part"
        run_measured("model part", [sys.executable, "-m", "art2mus.rehearsal.model_part", "--size", "real",
                                    "--out", str(model_out)], source, env, log)
        report["model_part"] = json.loads((model_out / "rehearsal.json").read_text())
    report["total_seconds"] = time.monotonic() - started
    write_report(report, out)
    return report


def write_report(report: dict[str, Any], out: Path) -> None:
    """rehearsal.json and rehearsal.md, each written whole or not at all."""
    lines = [f"# art2mus rehearsal ({report['mode']}, {report['size']} size)", "", report["note"] + ".", "",
             f"Total {report['total_seconds']:,.0f} s on {report['device']}; building the full-size checkpoints "
             f"{report['build_seconds']:,.0f} s (cached after the first run).", "",
             "| step | wall s | peak RSS MiB | |", "|---|---:|---:|---|"]
    lines += [Measured(**item).row() for item in report["stages"]]
    lines += [Measured(**report["flow"]).row(),
              Measured(**{key: report["imagebind"][key] for key in ("name", "seconds", "peak_rss_mib",
                                                                    "returncode")}).row(), ""]
    serving = report["serving"]
    lines += [f"Served champion: ready in {serving['startup_seconds']:,.0f} s; one request ({serving['steps']} "
              f"sampling step(s)) answered in {serving['request_seconds']:,.0f} s with {serving['samples']:,} "
              f"samples at {serving['sample_rate']} Hz ({serving['seconds']:.2f} s).", "",
              f"ImageBind-huge: loaded in {report['imagebind']['load_seconds']:,.0f} s, "
              f"{report['imagebind']['images']} artworks embedded in {report['imagebind']['embed_seconds']:,.1f} s "
              f"({report['imagebind']['dim']}-d).", "",
              f"Evaluation: {report['evaluation']['items']} items, generation rows {report['evaluation']['rows']}, "
              f"caption baseline {report['evaluation']['caption_baseline']}.", "",
              "| part | parameters |", "|---|---:|"]
    lines += [f"| {name} | {count:,} |" for name, count in report["parameters"].items()]
    if "model_part" in report:
        lines += ["", "The model part's own report: `model_part/rehearsal.md`."]
    for name, text in (("rehearsal.json", json.dumps(report, indent=2, default=str) + "\n"),
                       ("rehearsal.md", "\n".join(lines) + "\n")):
        with tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp") as handle:
            handle.write(text)
        os.replace(handle.name, out / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="the rehearsal")
    run.add_argument("--mode", choices=("full", "ci"), default="full")
    run.add_argument("--work", type=Path, default=Path(".rehearsal"), help="checkpoints and the project copy")
    run.add_argument("--out", type=Path, default=None, help="report folder (default reports/rehearsal[-ci])")
    run.add_argument("--size", choices=("real", "tiny"), default="real", help="tiny: check the rehearsal itself")
    launcher = commands.add_parser("measure", help=argparse.SUPPRESS)
    launcher.add_argument("usage_file", type=Path)
    launcher.add_argument("cmd", nargs=argparse.REMAINDER)
    embed = commands.add_parser("embed-imagebind", help=argparse.SUPPRESS)
    embed.add_argument("checkpoint", type=Path)
    embed.add_argument("out", type=Path)
    embed.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "measure":
        return measure(args.usage_file, args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd)
    if args.command == "embed-imagebind":
        embed_with_imagebind(args.checkpoint, args.images, args.out)
        return 0
    source = Path.cwd()
    out = args.out or source / ("reports/rehearsal" if args.mode == "full" else "reports/rehearsal-ci")
    try:
        report = rehearse(args.mode, args.work.resolve(), out.resolve(), source, args.size)
    except RehearsalFailed as error:
        print(f"art2mus: rehearsal: {error}", file=sys.stderr)
        return 1
    print((out / "rehearsal.md").read_text())
    print(f"rehearsal: {report['total_seconds']:,.0f} s; report in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
