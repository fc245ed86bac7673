"""Exceptions with messages meant for operators."""


class RingfenceError(Exception):
    """An expected failure with a clear message (bad input, refused publish, ...)."""


class SchemaError(RingfenceError):
    """A table does not match the data contract (missing table/column, wrong type)."""


class QuarantineLimitExceeded(RingfenceError):
    """Too large a fraction of a table was quarantined."""


class RawCardNumberFound(RingfenceError):
    """A raw card number (PAN) appeared in an identifier column; the number is never echoed."""


class PublishRefused(RingfenceError):
    """The circuit breaker refused to switch the live list."""


class VerificationFailed(RingfenceError):
    """An export's signature, hash chain or checksums do not match."""


class StaleCleanInputs(RingfenceError):
    """A stage needs the validated inputs, but they are missing or came from other inputs."""
