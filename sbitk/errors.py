"""The package's own exception types.

Every user mistake raises a subclass of :class:`SbitkError` whose message names the thing, the
expected and the found value. The command line turns these into one line and exit code 2.
"""

from __future__ import annotations


class SbitkError(Exception):
    """Base class of every error sbitk raises on purpose."""


class PriorError(SbitkError, ValueError):
    """A prior was specified with invalid arguments or evaluated on invalid values."""


class SimulatorError(SbitkError):
    """A simulator is mis-declared, unknown, or returned output of the wrong shape or dtype."""


class UnknownSimulatorError(SimulatorError, KeyError):
    """A simulator name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BankError(SbitkError):
    """A simulation bank is missing, corrupt, or does not match the request."""


class ModelFileError(SbitkError):
    """A model file is truncated, corrupted, hand-edited, or of an unsupported format version."""


class ObservationError(SbitkError, ValueError):
    """Observed data has missing or extra columns, non-finite values or wrong dimensions."""


class TrainingError(SbitkError):
    """Training diverged (NaN or Inf loss) and could not be recovered."""
