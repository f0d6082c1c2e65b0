"""Errors a user can cause. The CLI turns each into one line on stderr and exit code 2."""


class SiamdiffError(Exception):
    """Bad input or configuration: a message meant for a person, never a traceback."""


class ImageReadError(SiamdiffError):
    """A file that is missing, empty, truncated, not an image, or too large to decode safely."""


class CheckpointError(SiamdiffError):
    """A checkpoint that is missing, corrupt, of another architecture or of another format version."""
