"""A moto S3 server in a process of its own (``python -m dask_lambda.backends.s3server``).

Binds 127.0.0.1 on a free port, prints ``PORT <n>`` on stdout once it
serves, and exits when its stdin closes, so it never outlives the process
that started it, even one that was killed.
"""

from __future__ import annotations

import sys


def main() -> None:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(f"PORT {server.get_host_and_port()[1]}", flush=True)
    try:
        sys.stdin.read()  # until the parent closes the pipe or dies
    finally:
        server.stop()


if __name__ == "__main__":
    main()
