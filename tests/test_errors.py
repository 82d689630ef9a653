"""Failures inside Lambda reach the client as clear, typed errors, in bounded time."""

from __future__ import annotations

import inspect
import os
import re
import threading
import time
import traceback

import dask
import numpy as np
import pytest
from dask_lambda_handler.runner import NotAvailableInLambda
from distributed import get_worker

from dask_lambda import LambdaClient
from dask_lambda.errors import (
    HandlerCrashedError,
    LambdaOutOfMemoryError,
    LambdaTimeoutError,
    RemoteTaskError,
    TaskSerializationError,
)

CLIENT_OPTIONS = {"function_timeout": 5, "memory": 700, "retries": 1}


class Unpicklable(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()


def failing(x):
    if x > 2:
        raise ValueError(f"x is too big: {x}")  # the line the traceback must name
    return x


FAILING_LINE = inspect.getsourcelines(failing)[1] + 2


def test_user_exception_type_message_and_remote_traceback(client):
    with pytest.raises(ValueError, match="x is too big: 3") as info:
        client.submit(failing, 3).result()
    frames = traceback.extract_tb(info.value.__traceback__)
    mine = [f for f in frames if f.name == "failing"]
    assert mine, [(f.filename, f.name) for f in frames]
    assert mine[-1].lineno == FAILING_LINE
    assert mine[-1].filename.endswith("test_errors.py")
    # the same through a collection
    with pytest.raises(ValueError, match="x is too big: 5"):
        dask.delayed(failing)(5).compute()


def test_exception_that_cannot_be_pickled_keeps_type_name_and_message(client):
    def raise_it():
        raise Unpicklable("lock inside")

    with pytest.raises(RemoteTaskError, match="Unpicklable: lock inside"):
        client.submit(raise_it).result()


def test_unpicklable_task_fails_before_upload_naming_the_task(client):
    lock = threading.Lock()
    before = client.lambda_stats()["invocations"]
    with pytest.raises(TaskSerializationError) as info:
        client.submit(lambda: lock, key="holds-a-lock").result()
    message = str(info.value)
    assert "task 'holds-a-lock' cannot be sent to Lambda because it cannot be pickled" in message
    assert "cannot pickle '_thread.lock' object" in message
    assert "Nothing was uploaded or run" in message
    assert client.lambda_stats()["invocations"] == before


def test_unpicklable_result_is_a_clear_error(client):
    def make_generator():
        return (i for i in range(3))

    with pytest.raises(TypeError, match="result of type generator cannot be pickled"):
        client.submit(make_generator).result()


def test_get_worker_inside_a_task_raises_a_clear_error(client):
    with pytest.raises(NotAvailableInLambda, match=r"get_worker\(\) is not available inside a "
                                                  r"dask-lambda task"):
        client.submit(lambda: get_worker().address).result()


def _module_attribute():
    import distributed

    return distributed.get_client()


def _imported_in_body():
    from distributed import get_client

    return get_client()


def _worker_client_in_body():
    from distributed import worker_client

    with worker_client() as c:
        return c.id


def _secede_in_body():
    import distributed

    distributed.secede()


@pytest.mark.parametrize("func", [_module_attribute, _imported_in_body, _worker_client_in_body,
                                  _secede_in_body])
def test_every_spelling_of_a_worker_api_inside_a_task_raises_the_clear_error(client, func):
    name = {"_module_attribute": "get_client", "_imported_in_body": "get_client",
            "_worker_client_in_body": "worker_client", "_secede_in_body": "secede"}[
        func.__name__]
    with pytest.raises(NotAvailableInLambda) as info:
        client.submit(func, pure=False).result()
    assert str(info.value).startswith(
        f"distributed.{name}() is not available inside a dask-lambda task: the task runs in "
        "an AWS Lambda function, not on a Dask worker. Pass what the task needs as arguments "
        f"instead (e.g. client.submit(func, data) rather than calling {name}() inside func)")


def _lock_in_body():
    import distributed

    with distributed.Lock("x"):
        return 1


def _variable_in_body():
    from distributed import Variable

    return Variable("v").get()


@pytest.mark.parametrize(("func", "name"), [(_lock_in_body, "Lock"),
                                            (_variable_in_body, "Variable")])
def test_distributed_primitives_inside_a_task_raise_the_clear_error(client, func, name):
    with pytest.raises(NotAvailableInLambda) as info:
        client.submit(func, pure=False).result()
    assert str(info.value).startswith(
        f"distributed.{name} is not available inside a dask-lambda task: it is kept by the Dask "
        "scheduler, which a Lambda function cannot reach.")


def test_timeout_names_the_setting_and_the_task_and_environment_is_replaced(client):
    t0 = time.monotonic()
    with pytest.raises(LambdaTimeoutError) as info:
        client.submit(time.sleep, 30, key="sleepy").result()
    assert time.monotonic() - t0 < 20
    message = str(info.value)
    assert message.startswith("task 'sleepy': Task timed out after 5.00 seconds")
    assert "LambdaClient(..., function_timeout=10)" in message
    assert client.submit(lambda: 42).result() == 42


def test_out_of_memory_names_the_setting(s3_endpoint):
    def hog():
        block = np.ones(2_000_000_000 // 8)  # 2 GB, touched: more than the 700 MB function
        return float(block.sum())

    # a timeout the allocation cannot reach first, even on a loaded machine
    with LambdaClient("s3://t-errors-oom/run", local_s3_endpoint=s3_endpoint, memory=700,
                      function_timeout=120, retries=1, concurrency=1,
                      dashboard_address=None) as client:
        t0 = time.monotonic()
        with pytest.raises(LambdaOutOfMemoryError) as info:
            client.submit(hog, key="hog").result()
        assert time.monotonic() - t0 < 60
    message = str(info.value)
    assert message.startswith("task 'hog': Runtime exited: out of memory. The task used ")
    assert re.search(r"The task used \d+ MB, the function's 700 MB", message)
    assert "LambdaClient(..., memory=1400)" in message


def test_crashed_environment_is_retried_once(client, tmp_path):
    marker = tmp_path / "crashed-once"

    def crash_first_time(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(13)
        return "second attempt"

    before = client.lambda_stats()["retries"]
    assert client.submit(crash_first_time, str(marker)).result() == "second attempt"
    assert client.lambda_stats()["retries"] == before + 1


def test_crash_every_time_gives_up_after_the_retries(client):
    with pytest.raises(HandlerCrashedError) as info:
        client.submit(os._exit, 3, key="always-crashes").result()
    message = str(info.value)
    assert message.startswith("task 'always-crashes': Runtime exited with code 3")
    assert "Gave up after 2 attempts (retries=1)" in message
