"""Progress bars: tqdm on stderr, shown only when stderr is a terminal (logs and pipes stay clean)."""

from __future__ import annotations

import sys


def progress(total: int, desc: str, unit: str = "it"):
    """A tqdm bar of ``total`` steps (a context manager; ``update(n)`` advances it), gone when done."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not sys.stderr.isatty(), dynamic_ncols=True)
