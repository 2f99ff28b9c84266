"""Corrupt inputs end to end: each file a stage reads, truncated to half, stops that stage with a message that
names the file, says what is wrong and what to run, and no traceback (issue 12, item 3).

The cases come from dvc.yaml: for every stage in order, each dependency another stage produced (data the
pipeline made, the sample's raw data included), tested once, at its first reader. A directory dependency
is tested through its largest file of each kind (suffix): the weights and the config of a model folder,
a shard of a cache. The stage runs as DVC runs it (its `cmd`), in a copy of the shared pipeline fixture;
its outputs are put back after each case, so a stage that wrongly succeeds cannot spoil the next one.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers import BIN, ROOT, run

pytestmark = pytest.mark.slow
STAGE_TIMEOUT = 600  # seconds one stage may take to fail (they fail while reading, in seconds)

# Raw media: ingest quarantines an unreadable image or track by name and goes on (its contract, tested in
# tests/code/test_ingest.py), so truncating one is not an error.
MEDIA = {".jpg", ".jpeg", ".png", ".mp3", ".wav", ".flac", ".ogg", ".md"}
# Dependencies a stage declares only to run after a quality gate; it does not read them.
ORDERING_ONLY = {"data/reports/validate_raw.json", "data/reports/validate_splits.json"}
# Dependencies a stage reads only with other params (applied to the copy for that case).
READ_WITH = {"data/features/image_embeddings.safetensors": {"pair": {"method": "similarity"}},
             "data/features/audio_embeddings.safetensors": {"pair": {"method": "similarity"}}}
# The two readers issue 12 names, beyond the first readers.
NAMED_IN_ISSUE = [("train", "data/features/image_embeddings.safetensors"),
                  ("generate", "models/art2mus/prior/unet/diffusion_pytorch_model.safetensors")]


def resolved(text: str, params: dict) -> str:
    """dvc.yaml's `${section.key}` from params.yaml."""
    def value(match: re.Match) -> str:
        found = params
        for key in match.group(1).split("."):
            found = found[key]
        return str(found)

    return re.sub(r"\$\{([^}]+)\}", value, text)


def paths_of(entries: list, params: dict) -> list[str]:
    """The paths of a stage's deps/outs/metrics/plots list (strings, or one-key mappings with options)."""
    return [resolved(next(iter(entry)) if isinstance(entry, dict) else entry, params).rstrip("/")
            for entry in entries or []]


def pipeline(root: Path) -> tuple[dict, dict]:
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"], yaml.safe_load((root / "params.yaml").read_text())


def outputs(stage: dict, params: dict) -> list[str]:
    return [path for kind in ("outs", "metrics", "plots") for path in paths_of(stage.get(kind), params)]


def inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


def cases(root: Path = ROOT) -> list[tuple[str, str]]:
    """(stage, dependency) for each produced dependency at its first reader, then the issue's named readers."""
    stages, params = pipeline(root)
    produced: list[str] = []
    found: list[tuple[str, str]] = []
    covered: set[str] = set()
    for name, stage in stages.items():
        for dep in paths_of(stage.get("deps"), params):
            if dep in covered or dep in ORDERING_ONLY or not any(inside(dep, out) for out in produced):
                continue
            if dep in READ_WITH and name not in READ_WITH[dep]:
                continue
            covered.add(dep)
            found.append((name, dep))
        produced += outputs(stage, params)
    return found + [case for case in NAMED_IN_ISSUE if case not in found]


def case_param(stage: str, dep: str):
    return pytest.param(stage, dep, id=f"{stage}:{dep}")


def truncated_files(root: Path, dep: str) -> list[str]:
    """The file itself, or a directory's largest file of each suffix (raw media left out, see MEDIA)."""
    path = root / dep
    if path.is_file():
        return [dep]
    largest: dict[str, Path] = {}
    for item in sorted(path.rglob("*")):
        if item.is_file() and item.suffix.lower() not in MEDIA:
            if item.suffix not in largest or item.stat().st_size > largest[item.suffix].stat().st_size:
                largest[item.suffix] = item
    assert largest, f"{dep}: no file to truncate"
    return sorted(item.relative_to(root).as_posix() for item in largest.values())


@pytest.fixture(scope="module")
def project(pipeline_repo: Path, module_tmp: Path) -> Path:
    """A copy of the completed pipeline, so the shared fixture is never touched."""
    root = module_tmp / "project"
    shutil.copytree(pipeline_repo, root, symlinks=True)
    return root


def replace_file(path: Path, data: bytes) -> None:
    """A new file with `data` (never written through a link into the DVC cache)."""
    path.unlink()
    path.write_bytes(data)


def copy_over(source: Path, target: Path) -> None:
    """`target` becomes a copy of `source` (a file or folder), or is removed when there is no `source`."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True)
    elif source.exists():
        shutil.copy2(source, target)


def merged(base: dict, override: dict) -> dict:
    return {**base, **{key: merged(base.get(key, {}), value) if isinstance(value, dict) else value
                       for key, value in override.items()}}


def command(root: Path, stage: str, out: Path) -> list[str]:
    """The stage's dvc.yaml `cmd` (its `python` the project's), or `art2mus generate` of one sample image."""
    if stage == "generate":
        image = sorted((root / "data/sample/artgraph").rglob("*.jpg"))[0]
        return [str(BIN / "art2mus"), "generate", str(image), "-o", str(out), "--steps", "2", "--seconds", "0.5"]
    words = shlex.split(pipeline(root)[0][stage]["cmd"])
    return [str(BIN / "python") if words[0] == "python" else words[0], *words[1:]]


def run_truncated(root: Path, stage: str, dep: str, file: str, scratch: Path):
    """Run `stage` with `file` cut to half its bytes; every output of the stage, the file and params.yaml are
    put back afterwards."""
    stages, params = pipeline(root)
    touched = [file, "params.yaml", *(outputs(stages[stage], params) if stage in stages else [])]
    saved = scratch / "saved"
    shutil.rmtree(saved, ignore_errors=True)
    for path in touched:
        if (root / path).exists():
            (saved / path).parent.mkdir(parents=True, exist_ok=True)
            copy_over(root / path, saved / path)
    try:
        if dep in READ_WITH:
            (root / "params.yaml").write_text(yaml.safe_dump(merged(params, READ_WITH[dep]), sort_keys=False))
        data = (root / file).read_bytes()
        replace_file(root / file, data[: len(data) // 2])
        return run(command(root, stage, scratch / "generated"), root, check=False, timeout=STAGE_TIMEOUT)
    finally:
        for path in touched:
            copy_over(saved / path, root / path)


@pytest.mark.parametrize(("stage", "dep"), [case_param(stage, dep) for stage, dep in cases()])
def test_a_truncated_input_stops_the_stage_with_a_message_naming_it(project: Path, tmp_path: Path, stage: str,
                                                                    dep: str) -> None:
    problems = []
    for file in truncated_files(project, dep):
        result = run_truncated(project, stage, dep, file, tmp_path)
        output = result.stdout + result.stderr
        said = [line for line in result.stderr.splitlines() if line.startswith(f"art2mus: {stage}: ") and file in line]
        if result.returncode == 0:
            problems.append(f"{file}: `{stage}` exited 0")
        elif "Traceback" in output:
            problems.append(f"{file}: `{stage}` printed a traceback:\n{output[-2000:]}")
        elif not said:
            problems.append(f"{file}: no `art2mus: {stage}:` line names it:\n{result.stderr[-2000:]}")
        elif not re.search(r"truncated|corrupt", said[0]) or "dvc repro" not in said[0]:
            problems.append(f"{file}: the message does not say what is wrong and what to run: {said[0]}")
    assert not problems, "\n".join(problems)

