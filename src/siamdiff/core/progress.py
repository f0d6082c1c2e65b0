"""Progress bars: tqdm on stderr, shown only when stderr is a terminal (logs and pipes stay clean)."""

from __future__ import annotations

import sys


def progress(total: int, desc: str, unit: str = "it", show: bool = True):
    """A tqdm bar of ``total`` steps (a context manager; ``update(n)`` advances it), gone when done; never shown
    unless ``show`` (one process of several)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not (show and sys.stderr.isatty()),
                dynamic_ncols=True)
