"""The distributed adapter: the one scheduler and the one worker of a Lambda cluster.

* `executor`: `LambdaExecutor`, the gateway worker's executor, which ships each task to
  Lambda, and `LocalTaskExecutor` for tasks annotated ``executor="local"``;
* `worker`: `GatewayWorker`, the worker that answers gathers with values and stops the tasks
  nobody wants any more;
* `scheduler`: `GatewayScheduler`, which batches every client's graphs and restarts the
  gateway in place.
"""

from __future__ import annotations

from .executor import LambdaExecutor, LocalTaskExecutor, gateway_metrics
from .scheduler import GatewayScheduler
from .worker import GatewayWorker

__all__ = ["GatewayScheduler", "GatewayWorker", "LambdaExecutor", "LocalTaskExecutor",
           "gateway_metrics"]
