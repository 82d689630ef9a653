"""Configuration: defaults in ``lambda.yaml``, documented in ``lambda-schema.yaml``.

One precedence everywhere: an explicit argument, then ``dask.config`` (which
also reads ``DASK_LAMBDA__<KEY>`` environment variables and yaml files), then
the packaged default.
"""

from __future__ import annotations

import os
from typing import Any

import dask.config
import yaml

_HERE = os.path.dirname(__file__)

with open(os.path.join(_HERE, "lambda.yaml")) as f:
    _defaults = yaml.safe_load(f)

dask.config.update_defaults(_defaults)


def get(name: str, value: Any = None) -> Any:
    """The effective value of setting ``name``: ``value`` if given, else ``lambda.<name>``."""
    if value is not None:
        return value
    return dask.config.get(f"lambda.{name}")


def schema() -> dict:
    """The JSON schema of the settings."""
    with open(os.path.join(_HERE, "lambda-schema.yaml")) as f:
        return yaml.safe_load(f)
