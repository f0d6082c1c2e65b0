"""The JSON round trip shared by every model config (stored as checkpoint metadata)."""

from __future__ import annotations

import numbers
import os
from dataclasses import asdict
from typing import Any, TypeVar

T = TypeVar("T", bound="JsonConfig")

# siamdiff works on small images: a larger side is refused (``--image-size``, a model file's config) instead of
# allocating gigabytes for one image — a damaged config with image_size 10⁶ made a model that hung on its first image.
MAX_IMAGE_SIZE = 1024

# The most memory one batch of images held at once may take (a folder read as uint8, an evaluation's clean and noisy
# float copies, sampled images): past it siamdiff refuses with a one-line error instead of being killed for memory
# part-way. $SIAMDIFF_MEMORY_GB raises (or lowers) it on a machine with more (or less) memory.
MEMORY_ENV = "SIAMDIFF_MEMORY_GB"
IMAGE_MEMORY_BYTES = 8 * 2**30


def over_memory(need: int, what: str, fix: str) -> str | None:
    """The one-line refusal when ``need`` bytes of ``what`` exceed the limit, else None."""
    limit = IMAGE_MEMORY_BYTES
    text = os.environ.get(MEMORY_ENV, "").strip()
    if text:
        try:
            limit = int(float(text) * 2**30)
        except (ValueError, OverflowError):  # not a number, nan, inf
            limit = 0
        if limit <= 0:
            return f"${MEMORY_ENV} must be a positive number of GiB, got '{text}'"
    if need <= limit:
        return None
    return (f"{what} would take {need / 2**30:.1f} GiB, over the limit of {limit / 2**30:g} GiB: {fix} (or raise "
            f"${MEMORY_ENV})")


SEED_LIMIT = 2 ** 63  # torch.manual_seed takes seeds from 0 up to below this


def check_seed(seed: object, param: str = "seed") -> int:
    """``seed`` as an int if torch can seed a generator with it, else a one-line refusal naming ``param``."""
    from .errors import require

    ok = isinstance(seed, numbers.Integral) and not isinstance(seed, bool)
    require(ok and 0 <= int(seed) < SEED_LIMIT, param, "a whole number from 0 to 2**63 - 1", seed)
    return int(seed)


class JsonConfig:
    """Mixin for frozen dataclass configs: ``to_dict`` for JSON, ``from_dict`` turns JSON lists back into tuples."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def auto_or(parse: Any) -> Any:
    """A parser of option text: ``auto``, else the text parsed by ``parse`` (int or float), else the text itself,
    which the library then refuses with a message naming the option (the command line's and the web API's)."""

    def convert(text: str) -> Any:
        if text == "auto":
            return text
        try:
            return parse(text)
        except ValueError:
            return text

    return convert
