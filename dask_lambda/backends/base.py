"""The one small interface every backend implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from dask_lambda_handler import records

from ..errors import ConfigurationError, HandlerCrashedError
from ..scaling import SCALING_PERIOD, SCALING_RATE


@dataclass(frozen=True)
class FunctionSettings:
    """What a backend needs to know about the function it runs.

    Attributes
    ----------
    concurrency
        Most invocations in flight at once.
    memory
        Memory per execution environment, MB.
    timeout
        Seconds an invocation may run.
    signing_key
        The HMAC key job and result payloads are signed with.
    """

    concurrency: int
    memory: int
    timeout: float
    signing_key: bytes


class S3Endpoint(abc.ABC):
    """The S3 a backend's jobs and results live in: how the client reaches it, and whether the
    cluster may create a missing bucket there."""

    #: Whether the cluster may create a missing bucket (S3 is a private local server).
    creates_bucket: bool = False

    @property
    @abc.abstractmethod
    def options(self) -> dict[str, Any]:
        """Keyword arguments for an S3 client that reaches this S3."""

    def environment(self) -> dict[str, str]:
        """Environment variables the client process needs while open (e.g. the endpoint)."""
        return {}


class Invoker(abc.ABC):
    """Where a backend's invocations run: local execution environments
    (`dask_lambda.backends.local.invoker`), Lambda's Invoke API (`dask_lambda.backends.invoke`)
    or the S3 trigger (`dask_lambda.backends.aws.trigger`).

    It counts what it sent and the cold starts it saw, which the backend reports.
    """

    def __init__(self) -> None:
        #: Invocations sent that may have run (not the ones refused), cold starts seen.
        self.invocations = 0
        self.cold_starts = 0
        #: Set by `stop`: no invocation is started any more.
        self.stopped = False

    @abc.abstractmethod
    async def invoke(self, event: dict) -> dict:
        """Invoke the handler once with ``event`` and return its response (see
        `Backend.invoke`)."""

    def count_cold_start(self, response: dict) -> dict:
        """Count a cold start where the handler's response says it ran in a new execution
        environment (its ``stats``); returns ``response``."""
        if records.ran_cold(response):
            self.cold_starts += 1
        return response

    def set_concurrency(self, concurrency: int) -> None:  # noqa: B027  (optional hook)
        """Hold up to ``concurrency`` invocations at once from now on."""

    async def stop(self) -> None:
        """Start no invocation any more, and stop running ones where it can."""
        self.stopped = True

    async def close(self) -> None:  # noqa: B027
        """Release what the invoker holds (connections, processes)."""


class Backend(abc.ABC):
    """Runs handler invocations somewhere.

    A backend starts what it needs (`start`), invokes the handler with a
    Lambda-shaped event and returns its response (`invoke`), and removes what
    it started (`close`).  Failures of the execution environment raise the
    typed errors of :mod:`dask_lambda.errors`.  It is two components: where its
    S3 is, `s3` (an `S3Endpoint`, set in ``__init__``), and where invocations run,
    `invoker` (an `Invoker`, set by `start`); `invoke` sends through the invoker.

    A backend made without ``settings`` can be given to a client,
    ``LambdaClient(bucket, backend=SimulatedBackend())``: the cluster then passes it
    the settings it built (concurrency, memory, timeout, signing key) through
    `configure`, once, before `start`.
    """

    #: Backend name as given to ``LambdaClient(backend=...)``.
    name: str = ""
    #: Whether `invoke` accepts ``memory=`` (a larger memory for one invocation).
    supports_memory_override: bool = False
    #: New execution environments allowed per ``scaling_period`` seconds (the client ramps
    #: up no faster; see :mod:`dask_lambda.scaling`).
    scaling_rate: int = SCALING_RATE
    scaling_period: float = SCALING_PERIOD
    #: The function's settings (given to ``__init__``, or by the cluster through `configure`).
    settings: FunctionSettings
    #: Where the jobs and results live.
    s3: S3Endpoint
    #: Where invocations run (None until `start`).
    invoker: Invoker | None = None

    def __init__(self, settings: FunctionSettings | None = None):
        if settings is not None:
            self.settings = settings

    @property
    def invocations(self) -> int:
        """Invocations sent that may have run (the invoker's count)."""
        return 0 if self.invoker is None else self.invoker.invocations

    @property
    def cold_starts(self) -> int:
        """Cold starts seen (the invoker's count)."""
        return 0 if self.invoker is None else self.invoker.cold_starts

    def configure(self, settings: FunctionSettings) -> None:
        """Take the cluster's function settings (called once, before `start`).

        Raises
        ------
        ConfigurationError
            The backend already has settings: it was made with them, or another client
            uses it.
        """
        if hasattr(self, "settings"):
            raise ConfigurationError(
                f"this {type(self).__name__} already has its settings (it was made with "
                "settings, or another client uses it): give each LambdaClient a new backend "
                f"made without settings, e.g. LambdaClient(..., backend={type(self).__name__}())")
        self.settings = settings

    async def set_concurrency(self, concurrency: int) -> None:
        """Allow ``concurrency`` invocations at once from now on (``cluster.scale``); the
        client paces invocations itself, this resizes what the backend holds for them."""
        import dataclasses

        self.settings = dataclasses.replace(self.settings, concurrency=concurrency)
        if self.invoker is not None:
            self.invoker.set_concurrency(concurrency)

    @property
    def max_concurrency(self) -> int | None:
        """The most invocations this backend can run at once (None: Lambda's account limit)."""
        return None

    @property
    def billed_memory_mb(self) -> int:
        """Memory (MB) Lambda bills each invocation at: the client's ``memory`` setting, unless
        the backend learns the deployed function's (read after `start`)."""
        return self.settings.memory

    @property
    def billed_architecture(self) -> str:
        """``"x86_64"`` or ``"arm64"``: the function's architecture (sets the GB-second price)."""
        return "x86_64"

    @property
    def creates_bucket(self) -> bool:
        """Whether the cluster may create a missing bucket (`S3Endpoint.creates_bucket`)."""
        return self.s3.creates_bucket

    @property
    def s3_options(self) -> dict[str, Any]:
        """Keyword arguments for an S3 client that reaches the backend's S3."""
        return self.s3.options

    def client_environment(self) -> dict[str, str]:
        """Environment variables the client process needs while open (e.g. a local S3 endpoint)."""
        return self.s3.environment()

    async def start(self) -> None:  # noqa: B027  (optional hook: nothing by default)
        """Start whatever the backend needs."""

    async def invoke(self, event: dict, **options: Any) -> dict:
        """Invoke the handler once with ``event`` and return its response, both in their wire
        form (JSON-able dicts, as Lambda's Invoke API carries them; the dispatcher converts
        `dask_lambda_handler.records`' records at its edge, and a backend that reads a field
        reads it through them). ``options``: what the invoker takes besides (the local one,
        ``memory=``; see `supports_memory_override`).

        Raises `LambdaThrottledError` when Lambda refuses the invocation (429), and the
        other errors of :mod:`dask_lambda.errors` when the execution environment fails.
        """
        invoker = self.invoker
        if invoker is None or invoker.stopped:
            raise HandlerCrashedError(
                f"the {self.name} backend is {'not started' if invoker is None else 'closed'}")
        return await invoker.invoke(event, **options)

    async def stop(self) -> None:
        """Stop running invocations, where the backend can (before the run's objects go)."""
        if self.invoker is not None:
            await self.invoker.stop()

    async def close(self) -> None:
        """Stop and remove everything `start` made (a subclass closes its own parts after
        calling this)."""
        await self.stop()
        if self.invoker is not None:
            await self.invoker.close()
