"""Quiet, offline-safe process defaults: no analytics, tool state inside the project.

`python art2mus/env.py` prints the offline defaults the environment does not set, as KEY=VALUE lines: the
Makefile exports them to the tools it runs (it needs only the system Python, before .venv exists)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_MARKERS = ("params.yaml", "dvc.yaml")

# Tools stay silent unless the user points them somewhere; an explicit environment always wins.
OFFLINE_DEFAULTS = {
    "DVC_NO_ANALYTICS": "1",
    "ITERATIVE_DO_NOT_TRACK": "do-not-track",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
# With no credentials configured, boto3 would ask the cloud metadata address (169.254.169.254) for an
# instance role's. Off unless the user set it: on a cloud instance with a role, AWS_EC2_METADATA_DISABLED=false.
CLOUD_METADATA_DEFAULTS = {"AWS_EC2_METADATA_DISABLED": "true"}
OFFLINE_DEFAULTS.update(CLOUD_METADATA_DEFAULTS)
# Prefect gives its ephemeral API server 20 s to start; on a busy 2-core machine its imports alone can
# take longer, and the retrain or features flow then fails before it starts ("Timed out while attempting
# to connect to ephemeral Prefect API server"). An explicit setting wins.
SLOW_MACHINE_DEFAULTS = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
OFFLINE_DEFAULTS.update(SLOW_MACHINE_DEFAULTS)


def project_root(start: str | Path | None = None) -> Path:
    """The nearest directory at or above `start` (default: cwd) that holds params.yaml."""
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / PROJECT_MARKERS[0]).is_file():
            return candidate
    return here


def disable_cloud_metadata_lookup() -> None:
    """No credential lookup at the cloud metadata address, unless the user's environment asks for one."""
    for key, value in CLOUD_METADATA_DEFAULTS.items():
        os.environ.setdefault(key, value)


def interpreter_first(path: str) -> str:
    """`path` with this interpreter's scripts folder first: the stages DVC starts (`python -m stages.X`) and
    the tools they call run from the same environment as the command that started them, activated or not."""
    bin_dir = str(Path(sys.executable).parent)
    rest = [entry for entry in path.split(os.pathsep) if entry and entry != bin_dir]
    return os.pathsep.join([bin_dir, *rest])


def configure_environment(root: Path | None = None) -> Path:
    """Apply the offline defaults, put this interpreter's scripts first on PATH and keep Prefect's home inside
    the project; returns the root."""
    root = root or project_root()
    os.environ.update(unset_offline_defaults())
    os.environ["PATH"] = interpreter_first(os.environ.get("PATH", ""))
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("DVC_SITE_CACHE_DIR", str(root / ".dvc" / "tmp" / "site_cache"))
    return root


def project_environment(root: Path) -> dict[str, str]:
    """The environment `make` gives the tools it runs in the project at `root`: this interpreter's scripts
    first on PATH, the offline defaults, tool state inside the project, none of the caller's MLflow,
    Prefect or DVC settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "PREFECT_", "DVC_"))}
    env.update(OFFLINE_DEFAULTS, PATH=interpreter_first(env.get("PATH", "")),
               DVC_SITE_CACHE_DIR=str(root / ".dvc" / "tmp" / "site_cache"), PREFECT_HOME=str(root / ".prefect"))
    return env


def unset_offline_defaults() -> dict[str, str]:
    """The offline defaults the current environment does not set (an explicit environment wins)."""
    return {key: value for key, value in OFFLINE_DEFAULTS.items() if key not in os.environ}


if __name__ == "__main__":
    print("\n".join(f"{key}={value}" for key, value in unset_offline_defaults().items()))
