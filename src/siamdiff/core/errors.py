"""Errors a user can cause: one exception type with a message meant for a person, never a traceback.

A message may name parameters of the call that was refused. It is written with each such name in braces and the
names listed, ``SiamdiffError("{sigma} must be 0 or more, got -1", "sigma")``: from Python it reads
``sigma must be 0 or more, got -1``; the command line renders the same error with its own flag names
(``--sigma must be ...``), so the library never speaks of flags and the CLI never rewrites messages by hand.
"""

from __future__ import annotations

from collections.abc import Mapping


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message, or its type's name when it has none: the part of a library's
    error that fits in a one-line message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def one_line(message: str) -> str:
    """``message`` with control characters (a newline in a file name, say) escaped: an error stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


class SiamdiffError(Exception):
    """Bad input or configuration. ``params`` are the parameter names written as ``{name}`` in ``message``."""

    def __init__(self, message: str, *params: str) -> None:
        self.template = message
        self.params = params
        super().__init__(self.render())

    def render(self, names: Mapping[str, str] | None = None) -> str:
        """The message with each named parameter spelled as ``names`` says (a flag), else as itself."""
        text = self.template
        for param in self.params:
            text = text.replace("{" + param + "}", (names or {}).get(param, param))
        return text


class ImageReadError(SiamdiffError):
    """A file that is missing, empty, truncated, not an image, or too large to decode safely."""


class CheckpointError(SiamdiffError):
    """A checkpoint that is missing, corrupt, of another architecture or of another format version."""


def require(ok: bool, param: str, wanted: str, value: object) -> None:
    """Refuse ``value`` of the parameter ``param`` unless ``ok``: "``param`` must be ``wanted``, got ``value``"."""
    if not ok:
        raise SiamdiffError(f"{{{param}}} must be {wanted}, got {value}", param)


def number(value: object, param: str) -> float:
    """``value`` as a float, or a one-line refusal naming ``param`` (a string, None or a list is not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(value)  # numpy and torch scalars
        except (TypeError, ValueError):
            raise SiamdiffError(f"{{{param}}} must be a number, got {value!r}", param) from None
    return float(value)


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal (SIGINT, SIGTERM) after finishing its step and writing a checkpoint; the command
    line exits with ``128 + signal`` (130, 143). ``message`` says where and how to continue."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.message = message
        self.signal_number = signal_number
