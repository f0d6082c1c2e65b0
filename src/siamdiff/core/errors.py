"""Errors a user can cause. The CLI turns each into one line on stderr and exit code 2."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message, or its type's name when it has none: the part of a library's
    error that fits in a one-line message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class SiamdiffError(Exception):
    """Bad input or configuration: a message meant for a person, never a traceback."""


class ImageReadError(SiamdiffError):
    """A file that is missing, empty, truncated, not an image, or too large to decode safely."""


class CheckpointError(SiamdiffError):
    """A checkpoint that is missing, corrupt, of another architecture or of another format version."""
