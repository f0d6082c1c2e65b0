"""The package version, in one place: the package face re-exports it, modules that record it import it here."""

__version__ = "0.1.0"
