"""One owner per concept: the wire records, the key layout, the signing-key variable and
Lambda's limits are each spelled out in one module, and everything else uses that module.

These read the code (its syntax tree, docstrings and comments left out), so a second
spelling of a concept fails the suite where it is written, not when the two drift apart.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "dask_lambda").rglob("*.py"), *(ROOT / "handler").rglob("*.py")])


def _code_constants(path: Path) -> Iterator[tuple[int, object]]:
    """(line, value) of the constants in ``path``'s code, docstrings excluded."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docstrings.add(id(node.value))  # a bare string: an attribute's docstring
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) not in docstrings:
            yield node.lineno, node.value


def _found(owner: str | tuple[str, ...], wanted) -> list[str]:
    owners = {owner} if isinstance(owner, str) else set(owner)
    hits = []
    for path in SOURCES:
        name = path.relative_to(ROOT).as_posix()
        if name in owners:
            continue
        hits += [f"{name}:{line}: {value!r}" for line, value in _code_constants(path)
                 if wanted(value)]
    return hits


#: The fields only the invoke event has (``status``, ``nbytes``, ``op`` and such are words
#: distributed's messages use too: an event's ``op`` is looked for as a dict below).
WIRE_FIELDS = {"job_key", "result_key", "inline_max", "max_output"}


def test_the_wire_records_are_spelled_out_only_in_records_py():
    def wire_field(value: object) -> bool:
        return isinstance(value, str) and value in WIRE_FIELDS

    # settings and trigger-job metadata name max-output as a setting, not as the event field
    assert _found(("handler/records.py", "dask_lambda/settings.py",
                   "dask_lambda/setting_values.py", "handler/trigger.py"), wire_field) == []


def test_no_event_is_written_as_a_dict_outside_records_py():
    hits = []
    for path in SOURCES:
        name = path.relative_to(ROOT).as_posix()
        if name == "handler/records.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict) and any(
                    isinstance(k, ast.Constant) and k.value == "op"
                    and isinstance(v, ast.Constant) and v.value in ("run", "ping")
                    for k, v in zip(node.keys, node.values, strict=True)):
                hits.append(f"{name}:{node.lineno}")
        hits += [f"{name}:{line}: {value!r}" for line, value in _code_constants(path)
                 if isinstance(value, (str, bytes)) and (
                     '"op":' in str(value) or "'op':" in str(value))]  # an event as JSON
    assert hits == []


@pytest.mark.parametrize("folder", ["jobs/", "results/", "runs/"])
def test_keys_are_built_only_in_s3keys_py(folder):
    def key_literal(value: object) -> bool:
        return isinstance(value, str) and (value.startswith(folder) or f"/{folder}" in value)

    assert _found("handler/s3keys.py", key_literal) == []


def test_the_signing_key_variable_is_named_only_in_protocol_py():
    assert _found("handler/protocol.py", lambda v: v == "DASK_LAMBDA_SIGNING_KEY") == []


#: Lambda's limits, as numbers: memory (128-10,240 MB), the longest timeout (900 s), the
#: synchronous payload (6 MB, read either way), the unzipped package (250 MB), the scaling
#: rate (1,000 environments per 10 s: too common a number to look for).
LIMITS = {10_240, 900, 6_000_000, 6 * 2**20, 262_144_000, 250 * 2**20}


def test_lambdas_limits_are_numbers_only_in_the_limits_modules():
    def limit(value: object) -> bool:
        return type(value) is int and value in LIMITS

    assert _found(("dask_lambda/limits.py", "handler/limits.py"), limit) == []
