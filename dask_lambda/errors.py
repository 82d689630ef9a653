"""Typed errors. Each message says what happened and what to do about it."""

from __future__ import annotations

from dask_lambda_handler.errors import (  # noqa: F401  (raised on the Lambda side)
    ClientFileError,
    InputLostError,
    NotAvailableInLambda,
    OutputTooLargeError,
    S3PermissionError,
    TaskExitError,
)


class DaskLambdaError(Exception):
    """Base class of every error dask-lambda raises itself."""


class ConfigurationError(DaskLambdaError, ValueError):
    """A bad argument or setting, detected before anything runs."""


class SettingTypeError(ConfigurationError, TypeError):
    """A setting given a value of the wrong type, or an argument that is not a setting."""


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

    def __reduce__(self) -> tuple:  # the error type survives the trip to the client
        return type(self), (str(self), self.error_type)


class RemoteTaskError(DaskLambdaError):
    """A task raised an exception that could not be pickled back; carries its type and text."""


class LambdaThrottledError(DaskLambdaError):
    """Lambda refused invocations (429 TooManyRequests) for longer than the backoff allows.

    Attributes
    ----------
    reason
        Lambda's ``Reason`` for the refusal (e.g. ``ConcurrentInvocationLimitExceeded``), or ``""``.
    retry_after
        Seconds Lambda asked the caller to wait (``Retry-After``), or ``None``.
    advice
        What the user can change so that it stops happening, or ``""``.
    """

    def __init__(self, message: str, reason: str = "", retry_after: float | None = None,
                 advice: str = ""):
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after
        self.advice = advice

    def __reduce__(self) -> tuple:
        return type(self), (str(self), self.reason, self.retry_after, self.advice)


class ResultLostError(DaskLambdaError):
    """A task's output object disappeared from S3 before it was read."""


class BudgetExceededError(DaskLambdaError):
    """Dispatching more work would pass the client's cost budget."""


class PermissionDeniedError(DaskLambdaError, PermissionError):
    """AWS refused an action; the message names the permission that is missing."""


class VersionMismatchError(ConfigurationError):
    """The deployed function runs other versions of Python or the libraries than this machine."""


class DeployError(DaskLambdaError):
    """``dask-lambda deploy``/``destroy`` could not do what was asked; the message says why and
    what to do."""


class ImageNeededError(DeployError):
    """The function can only run as a container image; the message says how to build it.

    Attributes
    ----------
    dockerfile
        The Dockerfile ``deploy`` wrote, in a build context beside the built package.
    """

    def __init__(self, message: str, dockerfile: str = ""):
        super().__init__(message)
        self.dockerfile = dockerfile


class PackageTooLargeError(ImageNeededError):
    """The deployment package is over Lambda's limit for zip packages (250 MB unzipped); an
    image may be 10 GB."""
