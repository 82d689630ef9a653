"""What the deployed handler must match: the Lambda runtime and library versions.

The client pickles tasks with its own Python, cloudpickle and dask; the function
must unpickle them with the same minor Python and the same library versions.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

from dask_lambda_handler import protocol

#: Lambda's Python runtimes and the glibc of the OS each runs on: Amazon Linux 2 (glibc 2.26)
#: for python3.10 and 3.11, Amazon Linux 2023 (glibc 2.34) for python3.12 and later (Lambda
#: runtimes page). Wheels for the function must need no newer glibc.
RUNTIME_GLIBC = {"3.10": "2.26", "3.11": "2.26", "3.12": "2.34", "3.13": "2.34", "3.14": "2.34"}
#: glibc of Amazon Linux 2023, the OS of the images built for Python 3.10/3.11 when their
#: runtime's Amazon Linux 2 has no wheels for the local versions.
AL2023_GLIBC = "2.34"
#: Distributions whose versions the client compares with the deployed handler's: those whose
#: objects travel pickled between the two (the handler reports the same list).
CHECKED = protocol.VERSIONED


def local_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def runtime_for(python: str) -> str:
    """The Lambda runtime name for a Python ``X.Y`` (e.g. ``python3.11``); raises if none."""
    if python not in RUNTIME_GLIBC:
        from ..errors import DeployError

        raise DeployError(
            f"AWS Lambda has no Python {python} runtime (it has "
            f"{', '.join(RUNTIME_GLIBC)}). Run dask-lambda from a Python that Lambda offers, "
            "e.g. `python3.12 -m venv .venv && .venv/bin/pip install dask-lambda`.")
    return f"python{python}"


def local_versions() -> dict:
    """The handler's view of this machine (same keys as the handler's ping answer)."""
    out: dict = {"python": local_python(), "protocol": protocol.PROTOCOL_VERSION}
    for dist in CHECKED:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def differences(deployed: dict, local: dict | None = None) -> list[str]:
    """Human-readable differences between the deployed handler's versions and this machine's."""
    local = local or local_versions()
    diffs = []
    for name in ("python", *CHECKED, "protocol"):
        there, here = deployed.get(name), local.get(name)
        if str(there) != str(here):
            diffs.append(f"{name} {there or 'missing'} there, {here or 'missing'} here")
    return diffs
