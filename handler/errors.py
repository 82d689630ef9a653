"""Errors raised on the Lambda side (standard library only, so the handler stays light).

`dask_lambda.errors` re-exports them for users.
"""

from __future__ import annotations


class NotAvailableInLambda(RuntimeError):
    """Raised by worker-only ``distributed`` APIs called inside a Lambda task."""


class OutputTooLargeError(ValueError):
    """A task's output is larger than the ``max-output`` setting; it was not stored."""


class InputLostError(FileNotFoundError):
    """An input of the task (another task's output in S3) was deleted before it was read."""


class S3PermissionError(PermissionError):
    """The function's role may not do an S3 action it needs; names the permission."""


class SigningKeyError(RuntimeError):
    """The function has no signing key, or may not read the one its configuration names."""


class TaskExitError(RuntimeError):
    """A task raised SystemExit or KeyboardInterrupt (``sys.exit()`` inside the task, say).

    That is the task's own outcome, reported at once and never retried; it arrives as this
    error so that ``future.result()`` does not end the client's script.
    """


class ClientFileError(FileNotFoundError):
    """A task opened a path on the client's disk, which a Lambda function cannot see.

    Raised by the local backend's execution environments, where such a path would
    otherwise open; in Lambda it does not exist.
    """

    def __str__(self) -> str:  # the message names the path already
        return str(self.strerror)
