"""Loading pretrained parts without the libraries' own chatter in a stage's log."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """diffusers' and transformers' loading progress bars off (a stage shows its own progress), and their
    notices kept out of the log: the real configs' older keys (the vocoder's model_type `hifigan`), and
    diffusers' "non-standard module" warning, which prints the whole repr of a part handed to a pipeline
    (thousands of lines for AudioLDM2's UNet)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = transformers_logging.get_verbosity(), diffusers_logging.get_verbosity()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()
        transformers_logging.set_verbosity(levels[0])
        diffusers_logging.set_verbosity(levels[1])
