"""Progress bars with ETA for long work (simulation, ingestion, training, inference)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr (elapsed, rate and ETA), silent when disabled or when stderr is not a TTY in CI."""
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5, **kwargs)
