"""Errors precipfast raises on purpose: each message names what was wrong and what was expected.

The CLI turns every `PrecipfastError` into one line on stderr and exit code 1 (`--debug` shows the
traceback). Plain `ValueError`/`TypeError` stay for programming errors in the Python API.
"""


class PrecipfastError(Exception):
    """Base class: a user-facing failure with a one-line message."""


class InputFormatError(PrecipfastError):
    """An input file is missing, unreadable, or its variables, shapes, units or values are wrong."""


class EngineMismatchError(PrecipfastError):
    """A model bundle or engine is corrupted, tampered with, or does not match its manifest/config."""


class BackendUnavailableError(PrecipfastError):
    """A requested backend cannot run here (library missing, no GPU); the message says why."""


class KernelUnavailableError(PrecipfastError):
    """A fused kernel cannot run here (no GPU or Triton); the message says which fallback ran."""


class SamplingError(PrecipfastError):
    """Sampling produced rates that are not numbers (inf/NaN): too few steps, or a broken model."""


class OutputError(PrecipfastError):
    """The output path cannot be written (missing or read-only directory, existing file)."""
