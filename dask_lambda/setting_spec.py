"""One setting's record (`Spec`): its names, where its value comes from (argument,
``dask.config``, environment variable, packaged default), and the one message that refuses a
value (used by :mod:`dask_lambda.settings`, the only reader)."""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Callable, Mapping
from typing import Any

import dask.config

from . import config
from .errors import ConfigurationError, SettingTypeError
from .setting_kinds import NOT_GIVEN, Context, Refused, py_literal

Parser = Callable[[Any, Context], Any]


@dataclasses.dataclass(frozen=True)
class Spec:
    key: str  # under ``lambda.``
    arg: str | None  # the argument of LambdaClient/LambdaCluster; None: config only
    expects: str  # what the setting takes, for messages
    parse: Parser
    example: Callable[[Mapping[str, Any]], Any]  # a value that is valid given ``done``
    nullable: bool = False  # whether None has a meaning (else a None argument = not given)
    applies: Callable[[Mapping[str, Any]], bool] = lambda done: True
    secret: bool = False
    derived: str | None = None  # the parser also gives this field (bucket -> prefix)

    @property
    def env(self) -> str:
        return "DASK_LAMBDA__" + self.key.upper().replace("-", "_").replace(".", "__")

    @property
    def names(self) -> str:
        where = f"lambda.{self.key}, {self.env}"
        if self.arg == "bucket":
            return f"the bucket (the first argument; {where})"
        return f"`{self.arg}=` ({where})" if self.arg else f"lambda.{self.key} ({self.env})"


def spec(*args: Any, **kwargs: Any) -> dict[str, Spec]:
    """A field's metadata: its `Spec`."""
    return {"spec": Spec(*args, **kwargs)}


_MISSING = object()


def configured(spec: Spec) -> Any:
    """The setting's value in dask.config (which holds the packaged defaults too)."""
    try:
        value = dask.config.get(f"lambda.{spec.key}", _MISSING)
    except (TypeError, AttributeError):  # e.g. lambda.batching set to a value, not a mapping
        value = _MISSING
    if value is _MISSING:
        value = _packaged_default(spec.key)
    return value


def _packaged_default(key: str) -> Any:
    node: Any = config.defaults()["lambda"]
    for part in key.split("."):
        node = node[part]
    return node


def source(spec: Spec, value: Any) -> str:
    """``"env"`` if the value is the one its environment variable gives, else ``"config"``."""
    raw = os.environ.get(spec.env)
    if raw is None:
        return "config"
    node: Any = dask.config.collect_env({spec.env: raw})
    for part in ["lambda", *spec.key.replace("-", "_").split(".")]:
        node = node.get(part, node.get(part.replace("_", "-"))) if isinstance(node, dict) else None
    return "env" if node == value else "config"


def env_text(value: Any) -> str:
    return shlex.quote(value) if isinstance(value, str) else repr(value)


def error(spec: Spec, value: Any, source: str, refused: Refused, done: Mapping[str, Any],
           written: str | None) -> ConfigurationError:
    """The one message builder: what was given, why it is refused, the setting's names and
    what it takes, and a corrected call that is valid."""
    shown = "<hidden>" if spec.secret and value is not None else py_literal(value)
    if source == "argument":
        given = f"{written}={shown}"
    elif source == "env":
        given = f"{spec.env}={'<hidden>' if spec.secret else os.environ[spec.env]}"
    else:
        given = f"lambda.{spec.key}={shown}"
    example = refused.example if refused.example is not NOT_GIVEN else spec.example(done)
    if spec.arg == "bucket":
        fix = f"LambdaClient({py_literal(example)}, ...)"
    elif spec.arg:
        fix = f"LambdaClient(..., {spec.arg}={py_literal(example)})"
    else:
        fix = f"dask.config.set({{{py_literal('lambda.' + spec.key)}: {py_literal(example)}}})"
    if source == "env":
        fix += f", or {spec.env}={env_text(example)}"
    lead = refused.problem if refused.whole else f"{given} is not valid: {refused.problem}"
    advice = "did you mean" if refused.did_you_mean else "e.g."
    message = f"{lead}. Setting {spec.names} takes {spec.expects}; {advice} {fix}"
    if refused.did_you_mean:
        message += "?"
    return (SettingTypeError if refused.type_error else ConfigurationError)(message)
