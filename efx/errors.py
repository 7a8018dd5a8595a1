"""The one exception type for failures a user can act on."""

from __future__ import annotations


class EfxError(Exception):
    """A user-facing failure: the CLI prints `efx: <message>` and exits 1, without a traceback."""
