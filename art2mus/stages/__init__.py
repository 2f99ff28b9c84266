"""The pipeline's stages as library functions: `art2mus.stages.<name>.run` is the body of DVC's
`python -m stages.<name>` (stages/ in the project) and of the CLI commands that run a stage; `run_stage`
calls a stage module's `main` with logging, offline defaults, and errors as messages, not tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager

from art2mus.env import configure_environment
from art2mus.errors import Art2MusError
from art2mus.logs import setup_logging
from art2mus.tracking.runs import StageRun

# How a stage opens its tracking run: art2mus.tracking.stage_run (a test passes a fake).
OpenRun = Callable[..., AbstractContextManager[StageRun]]


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Call a stage's `main`; an Art2MusError exits 1 with its message on stderr."""
    setup_logging()
    configure_environment()
    try:
        main()
    except Art2MusError as error:
        print(f"art2mus: {name}: {error}", file=sys.stderr)
        sys.exit(1)
