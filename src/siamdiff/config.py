"""The JSON round trip shared by every model config (stored as checkpoint metadata)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, TypeVar

T = TypeVar("T", bound="JsonConfig")

# siamdiff works on small images: a larger side is refused (``--image-size``, a model file's config) instead of
# allocating gigabytes for one image — a damaged config with image_size 10⁶ made a model that hung on its first image.
MAX_IMAGE_SIZE = 1024

# The most memory one batch of images held at once may take (a folder read as uint8, an evaluation's clean and noisy
# float copies): past it siamdiff refuses with a one-line error instead of being killed for memory part-way.
IMAGE_MEMORY_BYTES = 8 * 2**30


class JsonConfig:
    """Mixin for frozen dataclass configs: ``to_dict`` for JSON, ``from_dict`` turns JSON lists back into tuples."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
