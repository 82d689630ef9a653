"""The distributed adapter: the one scheduler and the one worker of a Lambda cluster.

* `async_executor`: the worker's executor hook, each task a coroutine on its event loop;
* `executor`: `LambdaExecutor`, the gateway worker's executor, which ships each task to
  Lambda; `local_tasks`: `LocalTaskExecutor` for tasks annotated ``executor="local"``;
* `metrics`: the Lambda columns of the dashboard's worker table;
* `worker`: `GatewayWorker`, the worker that answers gathers with values and stops the tasks
  nobody wants any more;
* `scheduler`: `GatewayScheduler`, which batches every client's graphs and restarts the
  gateway in place.
"""

from __future__ import annotations

from .executor import LambdaExecutor
from .local_tasks import LocalTaskExecutor
from .metrics import gateway_metrics
from .scheduler import GatewayScheduler
from .worker import GatewayWorker

__all__ = ["GatewayScheduler", "GatewayWorker", "LambdaExecutor", "LocalTaskExecutor",
           "gateway_metrics"]
