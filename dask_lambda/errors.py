"""Typed errors. Each message says what happened and what to do about it."""

from __future__ import annotations


class DaskLambdaError(Exception):
    """Base class of every error dask-lambda raises itself."""


class ConfigurationError(DaskLambdaError, ValueError):
    """A bad argument or setting, detected before anything runs."""


class TaskSerializationError(DaskLambdaError, TypeError):
    """A task's function or arguments cannot be pickled, so it cannot be sent to Lambda."""


class LambdaTimeoutError(DaskLambdaError, TimeoutError):
    """A task ran past the function timeout and was stopped."""


class LambdaOutOfMemoryError(MemoryError, DaskLambdaError):  # this order survives tblib pickling
    """A task used more memory than the function has and was killed."""


class HandlerCrashedError(DaskLambdaError):
    """The execution environment died while running a task (and retries ran out)."""


class FunctionError(DaskLambdaError):
    """The handler itself failed (not the task): bad job object, S3 access, version skew.

    Attributes
    ----------
    error_type
        Lambda's ``errorType`` (for example ``PayloadError``).
    """

    def __init__(self, message: str, error_type: str = "Unhandled"):
        super().__init__(message)
        self.error_type = error_type


class RemoteTaskError(DaskLambdaError):
    """A task raised an exception that could not be pickled back; carries its type and text."""
