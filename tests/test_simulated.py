"""The simulated backend models Lambda's limits, and the client keeps to them.

Small, scaled-down runs (milliseconds instead of seconds): the invariants are
checked, never the speed (performance targets live in benchmarks/scale.py).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gc
import ssl

import pytest
from dask_lambda_handler import protocol, s3keys

from dask_lambda import LambdaClient
from dask_lambda.backends.base import FunctionSettings
from dask_lambda.backends.simulated import LambdaModel, SimulatedBackend, constant
from dask_lambda.errors import ConfigurationError, LambdaThrottledError, LambdaTimeoutError
from dask_lambda.scaling import Governor

KEY = bytes(range(32))
SETTINGS = FunctionSettings(concurrency=4, memory=1024, timeout=1.0, signing_key=KEY)


def _attempt(event: dict) -> str:
    """The result key's end: the task's token, a sequence number and the attempt."""
    return "/".join(event["result_key"].rsplit("/", 2)[1:])


def _max_in_window(times: list[float], period: float) -> int:
    """The most of ``times`` (sorted) inside any half-open window of ``period`` seconds."""
    most, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - period:
            start += 1
        most = max(most, end - start + 1)
    return most


RUN = "0123456789ab"


def _event(n: int = 0) -> dict:
    """A run event as the gateway sends it."""
    return {"op": "run", "bucket": "b", "job_key": f"jobs/{RUN}/00/x{n}-a0.job",
            "result_key": f"results/{RUN}/00/x{n}-a0.out"}


def _run_backend(model: LambdaModel, events: list[dict]) -> tuple[list, SimulatedBackend]:
    async def go() -> tuple[list, SimulatedBackend]:
        backend = SimulatedBackend(model, s3_endpoint="http://unused")
        backend.configure(SETTINGS)
        await backend.start()
        try:
            return await asyncio.gather(*(backend.invoke(e) for e in events),
                                        return_exceptions=True), backend
        finally:
            await backend.close()

    return asyncio.run(go())


def test_backend_answers_with_a_signed_result_in_the_handlers_shape():
    (response,), backend = _run_backend(LambdaModel(invoke_latency=0.001, cold_start=0.002),
                                        [_event()])
    assert response["status"] == "ok" and response["result_key"] is None
    blob = base64.b64decode(response["result"])
    assert len(blob) == response["nbytes"]
    payload = protocol.decode(blob, protocol.run_key(KEY, RUN),
                              s3keys.identity("b", _event()["result_key"]))
    assert payload.header["kind"] == "result" and payload.load() is None
    assert response["stats"]["cold"] is True and response["stats"]["duration_s"] == 0.0
    assert backend.counters()["cold_starts"] == 1


def test_backend_refuses_past_the_account_concurrency_and_the_scaling_rate():
    slow = LambdaModel(invoke_latency=0.0, cold_start=0.0, duration=constant(0.05),
                       account_concurrency=3)
    results, backend = _run_backend(slow, [_event(n) for n in range(5)])
    assert sum(isinstance(r, LambdaThrottledError) for r in results) == 2
    assert backend.counters()["throttles_concurrency"] == 2
    assert backend.counters()["peak_in_flight"] == 3

    ramp = LambdaModel(invoke_latency=0.0, cold_start=0.0, duration=constant(0.05),
                       scaling_rate=2, scaling_period=60.0)
    results, backend = _run_backend(ramp, [_event(n) for n in range(4)])
    assert sum(isinstance(r, LambdaThrottledError) for r in results) == 2
    assert "scaling limit" in str(next(r for r in results if isinstance(r, Exception)))
    assert backend.counters()["environments"] == 2


def test_backend_times_out_like_lambda():
    model = LambdaModel(invoke_latency=0.0, cold_start=0.0, duration=constant(5.0))
    (result,), backend = _run_backend(model, [_event()])
    assert isinstance(result, LambdaTimeoutError)
    assert "function_timeout=2" in str(result)  # the message shows the corrected call
    assert backend.counters()["environments"] == 1


def test_model_rejects_a_bad_scaling_rate_with_the_fix():
    with pytest.raises(ConfigurationError, match=r"LambdaModel\(scaling_rate=1000"):
        LambdaModel(scaling_rate=0)


def test_governor_ramps_up_within_the_scaling_rate_and_learns_from_429s():
    async def go() -> tuple[list[float], Governor]:
        loop = asyncio.get_running_loop()
        governor = Governor(8, rate=3, period=0.2)
        started: list[float] = []

        async def one() -> None:
            await governor.acquire()
            started.append(loop.time())

        t0 = loop.time()
        await asyncio.gather(*(one() for _ in range(8)))
        return [t - t0 for t in started], governor

    started, governor = asyncio.run(go())
    assert started[:3] == pytest.approx([0, 0, 0], abs=0.05)  # the first window's 3 at once
    assert _max_in_window(sorted(started), 0.2) <= 3  # then no more than 3 per 0.2 s
    assert governor.environments == 8 and governor.waits == 5

    governor.release(throttled=True)  # a 429 while 7 others run: 7 is what Lambda accepts
    assert governor.limit == 7
    for _ in range(7):
        governor.release(throttled=False)
    assert 7 < governor.limit < 8  # grows back by one per that many successes


@pytest.fixture(scope="module")
def model():
    return LambdaModel(invoke_latency=(0.003, 0.005), cold_start=(0.02, 0.03),
                       duration=constant(0.05), scaling_rate=50, scaling_period=0.25,
                       result=_attempt)


def test_simulated_run_keeps_lambdas_rules(s3_endpoint, model):
    backend = SimulatedBackend(model, s3_endpoint=s3_endpoint)
    with LambdaClient("s3://t-simulated/run", backend=backend, concurrency=200,
                      dashboard_address=None, set_as_default=False) as client:
        futures = client.map(str, range(2000), pure=False)
        results = client.gather(futures)
        stats = client.lambda_stats()
        for future, result in zip(futures, results, strict=True):  # each task got its own answer
            assert result.startswith(s3keys.task_token(future.key) + "-")
    counters = backend.counters()
    assert counters["invocations"] == 2000 == stats["tasks"] and stats["errors"] == 0
    # what the client saw is what the simulated Lambda counted
    assert (backend.stats.invocations, backend.stats.cold_starts) == (2000,
                                                                       counters["cold_starts"])
    assert counters["peak_in_flight"] <= 200
    assert counters["cold_starts"] == counters["environments"] == stats["cold_starts"] <= 200
    created = [t for t, _ in backend.stats.timeline]
    assert len(created) == counters["environments"]
    assert _max_in_window(created, 0.25) <= 50  # the scaling rate held throughout
    assert created[-1] >= 0.25 * (counters["environments"] // 50 - 1) - 0.05  # a real ramp
    # Requests Lambda refused (if any) were retried until they ran: no task was lost.
    assert counters["requests"] == counters["invocations"] + counters["throttles"]
    assert stats["throttled"] == counters["throttles"]


def test_throttled_invokes_are_retried_and_the_client_settles_on_the_account_limit(
        s3_endpoint, model):
    # Lambda's scaling rate high enough that every 429 is the account limit's: at 50 per
    # 0.25 s, latency jitter at the window's edge gave scaling 429s (0-50 a run), the client
    # backed off below 60, and the account limit refused as few as 1 (in 25 runs) or none.
    limited = dataclasses.replace(model, account_concurrency=60, scaling_rate=1000)
    backend = SimulatedBackend(limited, s3_endpoint=s3_endpoint)
    with LambdaClient("s3://t-simulated/run", backend=backend, concurrency=100,
                      dashboard_address=None, set_as_default=False) as client:
        results = client.gather(client.map(str, range(1000), pure=False))
        assert len(results) == 1000
        governor = client.cluster.executor.dispatch.governor
        assert 1 <= governor.limit < 100  # learnt from the 429s
        stats = client.lambda_stats()
    counters = backend.counters()
    assert counters["throttles_concurrency"] > 0
    assert counters["peak_in_flight"] <= 60
    assert counters["invocations"] == 1000 and stats["errors"] == 0
    assert stats["throttled"] == counters["throttles"]


def test_a_backend_instance_gets_the_clients_settings_once(s3_endpoint):
    thresholds = gc.get_threshold()
    backend = SimulatedBackend(s3_endpoint=s3_endpoint)
    with LambdaClient("s3://t-simulated/run", backend=backend, concurrency=7, memory=512,
                      dashboard_address=None, set_as_default=False) as client:
        assert client.cluster.backend is backend
        assert backend.settings.concurrency == 7 and backend.settings.memory == 512
        assert backend.settings.signing_key == client.cluster.settings.signing_key
        assert client.submit(str, 1).result() is None  # the simulated value
        assert gc.get_threshold()[0] >= 50_000  # the client's collector setting, while open
        with pytest.raises(ConfigurationError, match=r"backend=SimulatedBackend\(\)"):
            LambdaClient("s3://t-simulated/run", backend=backend)  # one client per backend
    assert gc.get_threshold() == thresholds  # restored on close


def test_a_backend_class_instead_of_an_instance_shows_the_call():
    with pytest.raises(ConfigurationError, match=r"backend=SimulatedBackend\(\)"):
        LambdaClient("s3://t-simulated/run", backend=SimulatedBackend)


def test_the_simulated_lambda_serves_https_with_a_certificate_the_client_checks(s3_endpoint):
    backend = SimulatedBackend(LambdaModel(invoke_latency=0.0, cold_start=0.0),
                               s3_endpoint=s3_endpoint, tls=True)
    with LambdaClient("s3://t-simulated/run", backend=backend, concurrency=4,
                      dashboard_address=None, set_as_default=False) as client:
        assert backend._url.startswith("https://127.0.0.1:")
        pool = backend.invoker.direct.pool
        assert pool.tls and pool.ssl_context.verify_mode == ssl.CERT_REQUIRED
        assert client.gather(client.map(str, range(20), pure=False)) == [None] * 20
    assert backend.counters()["invocations"] == 20
    assert backend._directory is None  # the certificate and key are gone with the client


def test_a_model_that_cannot_go_to_the_simulator_process_names_the_fix():
    import threading

    lock = threading.Lock()
    backend = SimulatedBackend(LambdaModel(duration=lambda event: lock.locked() and 0.0),
                               s3_endpoint="http://unused")
    backend.configure(SETTINGS)
    with pytest.raises(ConfigurationError) as info:
        asyncio.run(backend.start())
    assert str(info.value).startswith("the simulated Lambda runs in another process, and this "
                                      "LambdaModel cannot be pickled (TypeError: ")
    assert str(info.value).endswith("e.g. LambdaModel(duration=constant(1.0))")


def test_counters_that_cannot_be_read_are_reported_not_silently_zero(caplog):
    async def go() -> SimulatedBackend:
        backend = SimulatedBackend(LambdaModel(invoke_latency=0.0, cold_start=0.0),
                                   s3_endpoint="http://unused")
        backend.configure(SETTINGS)
        await backend.start()
        await backend.invoke({"op": "run"})
        backend._server.kill()  # the simulated Lambda dies before the client closes
        await backend._server.wait()
        await backend.close()
        return backend

    with caplog.at_level("WARNING", logger="dask_lambda.backends.simulated"):
        backend = asyncio.run(go())
    assert "could not read the simulated Lambda's counters" in caplog.text
    assert "backend.counters() keeps the last ones read" in caplog.text
    assert backend.counters()["invocations"] == 1  # what the client itself counted


class _LoadsOnlyHere:
    """A duration that pickles, but whose unpickling fails in another process."""

    def __call__(self, event: dict) -> float:
        return 0.0

    def __reduce__(self):
        return eval, ("1 / 0",)


def test_a_model_the_simulator_process_cannot_load_says_so():
    backend = SimulatedBackend(LambdaModel(duration=_LoadsOnlyHere()), s3_endpoint="http://unused")
    backend.configure(SETTINGS)

    async def go() -> None:
        try:
            await backend.start()
        finally:
            await backend.close()

    with pytest.raises(ConfigurationError) as info:
        asyncio.run(go())
    assert str(info.value) == ("the simulated Lambda endpoint did not start (see its output "
                               "above): its model could not be loaded there, or Python could not "
                               "start it.")
