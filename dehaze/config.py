"""Strict settings models, YAML loading and ``--set dotted.key=value`` overrides.

Every manifest and training config is a pydantic model derived from :class:`StrictModel`: unknown keys
are rejected by name, values are validated once, and the same model serves the CLI and the Python API.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from dehaze.errors import UserError

M = TypeVar("M", bound="StrictModel")


class StrictModel(BaseModel):
    """Base of every settings model: unknown keys are errors, models are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming the first offending field, e.g. ``manifest.yaml: optics.na: ...``."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; `dehaze schema` lists the valid keys)"
    more = f" (+{len(err.errors()) - 1} more problems)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` into (["a","b","c"], value); the value is read as YAML (numbers, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: expected dotted.key=value, e.g. --set camera.read_noise_e=4")
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError):
        value = raw
    check_yaml_size(value, f"--set {key.strip()}")
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``dotted.key=value`` override applied (creating sub-dicts)."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"--set {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def merge_sections(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override`` section by section, at every depth: a partial section keeps the
    base's other keys (a config's ``optim: {lr: ...}`` keeps the trainer's default optimiser name and
    scheduler). The one merge of ``train --config``, ``study`` and ``demo``; neither input is modified."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge_sections(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


MAX_YAML_NODES = 100_000  # values in a settings file once its aliases are expanded ("billion laughs": 10^9)
MAX_YAML_DEPTH = 50  # nested mappings/lists; real manifests and configs are 3 or 4 deep


def check_yaml_size(data: Any, source: str) -> None:
    """Refuse YAML that expands past MAX_YAML_NODES values (nested aliases), nests deeper than
    MAX_YAML_DEPTH, or refers to itself; iterative, and linear in the document (shared nodes counted once)."""
    memo: dict[int, tuple[int, int]] = {}  # id -> (expanded size, depth) of a finished mapping or list
    in_progress: set[int] = set()
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        obj, finished = stack.pop()
        if not isinstance(obj, (dict, list)):
            continue
        children = [c for c in (obj.values() if isinstance(obj, dict) else obj) if isinstance(c, (dict, list))]
        oid = id(obj)
        if finished:
            size = 1 + len(obj) + sum(memo[id(c)][0] for c in children)
            depth = 1 + max((memo[id(c)][1] for c in children), default=0)
            if size > MAX_YAML_NODES:
                raise UserError(f"{source}: expands to more than {MAX_YAML_NODES} values (nested YAML aliases?); refusing it")
            if depth > MAX_YAML_DEPTH:
                raise UserError(f"{source}: nests more than {MAX_YAML_DEPTH} levels deep; refusing it")
            memo[oid] = (size, depth)
            in_progress.discard(oid)
            continue
        if oid in memo:
            continue
        if oid in in_progress:
            raise UserError(f"{source}: a YAML alias refers to the value that contains it; refusing it")
        in_progress.add(oid)
        stack.append((obj, True))
        stack.extend((c, False) for c in children if id(c) not in memo)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, or raise a one-line :class:`UserError` naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a YAML file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a YAML text file (byte {exc.start} is not UTF-8)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where}") from None
    except RecursionError:
        raise UserError(f"{path}: nests too deeply to read; refusing it") from None
    check_yaml_size(data, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def build_model(cls: type[M], data: dict[str, Any], overrides: list[str], source: str) -> M:
    """Validate ``data`` with ``overrides`` applied as ``cls``; errors become one-line UserErrors."""
    merged = apply_overrides(data, overrides)
    try:
        model = cls.model_validate(merged)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source)) from None
    where = _non_finite(model.model_dump())
    if where is not None:  # inf passes gt=0: an infinite lr, photon count or pixel size is never meant
        raise UserError(f"{source}: {where[0]}: {where[1]} is not a finite number")
    return model


def _non_finite(obj: Any, path: str = "") -> tuple[str, float] | None:
    """(dotted key, value) of the first infinite or NaN float in a dumped settings model, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (path or "<root>", obj)
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite(value, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None
