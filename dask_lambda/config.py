"""Configuration files: defaults in ``lambda.yaml``, documented in ``lambda-schema.yaml``.

Importing this module registers the defaults with ``dask.config``. The settings are read
and checked in one place, :mod:`dask_lambda.settings`; nothing else reads ``lambda.*``.
"""

from __future__ import annotations

import copy
import os

import dask.config
import yaml

_HERE = os.path.dirname(__file__)

with open(os.path.join(_HERE, "lambda.yaml")) as f:
    _defaults = yaml.safe_load(f)

dask.config.update_defaults(_defaults)


def defaults() -> dict:
    """The packaged defaults (``lambda.yaml``), a copy."""
    return copy.deepcopy(_defaults)


def schema() -> dict:
    """The JSON schema of the settings."""
    with open(os.path.join(_HERE, "lambda-schema.yaml")) as f:
        return yaml.safe_load(f)
