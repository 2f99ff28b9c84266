"""The one exception family users see as a clean message instead of a traceback."""


class Art2MusError(Exception):
    """An error the user can act on; the CLI prints its message, not a traceback."""
