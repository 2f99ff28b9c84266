"""The pipeline's stages as library functions: `art2mus.stages.<name>.run` is the body of DVC's
`python -m stages.<name>` (stages/ in the project) and of the CLI commands that run a stage."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from art2mus.tracking.runs import StageRun

# How a stage opens its tracking run: art2mus.tracking.stage_run (a test passes a fake).
OpenRun = Callable[..., AbstractContextManager[StageRun]]
