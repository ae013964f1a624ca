"""The machine's memory, and byte counts for messages: what sizes are checked against before allocation."""

from __future__ import annotations

import os


def physical_memory_bytes() -> int | None:
    """The machine's memory (None where the system does not say): what sizes are checked against."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``n`` bytes for a message, in the largest binary unit it reaches, 3 digits: ``1.5 GiB``."""
    return next(f"{n / 2**e:.3g} {unit}" for e, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB"), (0, "bytes")) if n >= 2**e or e == 0)
