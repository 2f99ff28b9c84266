"""Running a stage module: logging, offline defaults, and errors as messages, not tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Callable

from art2mus.env import configure_environment
from art2mus.errors import Art2MusError
from art2mus.logs import setup_logging


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Call a stage's `main`; an Art2MusError exits 1 with its message on stderr."""
    setup_logging()
    configure_environment()
    try:
        main()
    except Art2MusError as error:
        print(f"art2mus: {name}: {error}", file=sys.stderr)
        sys.exit(1)
