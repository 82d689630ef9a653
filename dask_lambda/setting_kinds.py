"""The kinds of values settings take, parsed and checked: what every setting parser is
made of (used by :mod:`dask_lambda.setting_values`).

A parser takes the value as given (argument, config or environment text) and a `Context`
(the settings checked before it), and returns the checked value or raises `Refused`: why,
and optionally a corrected value; `dask_lambda.settings` turns that into the message. Sizes
go through `dask.utils.parse_bytes`, durations through `dask.utils.parse_timedelta`.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import enum
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from dask.utils import parse_bytes, parse_timedelta


class _NotGiven(enum.Enum):
    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"


#: Default of every setting argument: "not given", so that ``None`` can mean "off".
NOT_GIVEN = _NotGiven.NOT_GIVEN

#: A number written as text ("2048"), as opposed to a size string ("2 GiB").
_PLAIN_NUMBER = re.compile(r"^\s*[0-9]+(\.[0-9]*)?\s*$")


class Code(str):
    """Python source shown as it is in a corrected call (``SimulatedBackend()``)."""


class Refused(Exception):
    """A value a parser refuses: why, and optionally a corrected value that fits."""

    def __init__(self, problem: str, example: Any = NOT_GIVEN, *, type_error: bool = False,
                 whole: bool = False, did_you_mean: bool = False):
        super().__init__(problem)
        self.problem = problem
        self.example = example
        self.type_error = type_error
        self.whole = whole  # the problem replaces "<given> is not valid"
        self.did_you_mean = did_you_mean


@dataclasses.dataclass(frozen=True)
class Context:
    """What a parser knows besides the value."""

    done: Mapping[str, Any]  # the settings checked so far, by field name
    from_argument: bool


Parser = Callable[[Any, Context], Any]


def py_literal(value: Any) -> str:
    """``value`` as Python source, strings in double quotes."""
    if isinstance(value, Code):
        return str(value)
    return json.dumps(value) if isinstance(value, str) else repr(value)


# -- kinds of values ------------------------------------------------------------------------

def wrong_kind(value: Any, what: str) -> Refused:
    return Refused(f"a value of type {type(value).__name__} is not {what}", type_error=True)


def text_ok(value: Any, ctx: Context) -> bool:
    """Strings stand for booleans only where text is all there is (environment variables,
    quoted yaml): an argument must be True or False."""
    return isinstance(value, str) and not ctx.from_argument


def whole_number(value: Any, ctx: Context, what: str = "a whole number") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise wrong_kind(value, what)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise Refused(f"{value!r} is not {what}") from None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise Refused(f"{value!r} is not {what}")
    return int(value)


def real_number(value: Any, ctx: Context, what: str, *, infinite: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise wrong_kind(value, what)
    try:
        number = float(value.strip().lstrip("$") if isinstance(value, str) else value)
    except ValueError:
        raise Refused(f"{value!r} is not {what}") from None
    if math.isnan(number) or (math.isinf(number) and not infinite):
        raise Refused(f"{value!r} is not {what}")
    return number


def size_bytes(value: Any, what: str = "a size") -> int:
    """Bytes from a number or a size string (``"256 KiB"``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise wrong_kind(value, what)
    if isinstance(value, str):
        try:
            value = parse_bytes(value)
        except (ValueError, OverflowError):
            raise Refused(f"{value!r} is not {what}") from None
    if not (math.isfinite(value) and float(value).is_integer()):
        raise Refused(f"{value!r} is not a whole number of bytes")
    return int(value)


def duration_seconds(value: Any, what: str = "a duration") -> float:
    """Seconds from a number, a `datetime.timedelta` or a duration string (``"5 minutes"``)."""
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise wrong_kind(value, what)
    if isinstance(value, str):
        try:
            value = parse_timedelta(value)
        except (ValueError, KeyError, OverflowError, TypeError):
            raise Refused(f"{value!r} is not {what}") from None
    number = float(value)
    if not math.isfinite(number):
        raise Refused(f"{value!r} is not a finite duration")
    return number


def megabytes(value: Any, ctx: Context) -> int:
    """MB from a number (MB) or a size string (rounded to whole MiB, Lambda's "MB")."""
    if isinstance(value, str) and not _PLAIN_NUMBER.match(value):
        return round(size_bytes(value, "a size") / 2**20)
    if isinstance(value, str):  # "2048" is MB, as the number is
        return round(float(value))
    return whole_number(value, ctx, "a whole number of MB")


def boolean(value: Any, ctx: Context) -> bool:
    if isinstance(value, bool):
        return value
    if text_ok(value, ctx) and value.strip().lower() in ("true", "yes", "on", "1"):
        return True
    if text_ok(value, ctx) and value.strip().lower() in ("false", "no", "off", "0"):
        return False
    raise Refused(f"{value!r} is not True or False", type_error=not isinstance(value, str)
                  or ctx.from_argument)


def choice(choices: tuple[str, ...]) -> Parser:
    def parse(value: Any, ctx: Context) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        near = difflib.get_close_matches(str(value).lower(), choices, n=1, cutoff=0.6)
        raise Refused(f"choose one of {', '.join(map(repr, choices))}",
                      near[0] if near else choices[0], did_you_mean=bool(near),
                      type_error=not isinstance(value, str))
    return parse


def is_size_string(value: Any) -> bool:
    return isinstance(value, str) and not _PLAIN_NUMBER.match(value)
