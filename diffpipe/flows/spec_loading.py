"""Read a YAML spec, apply `--set` overrides, validate, and turn every failure into a SpecError."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from diffpipe.errors import SpecError
from diffpipe.schemas import CrossReferenceError, PipelineSpec
from diffpipe.schemas.base import FieldError


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML spec into a dict; missing or malformed files are SpecErrors."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(str(path), "spec file not found", "a readable YAML file", "nothing at that path")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError(where, "not valid YAML", found=str(getattr(e, "problem", e))) from e
    if not isinstance(raw, dict):
        raise SpecError(str(path), "the spec must be a mapping", "keys name, data, model, stages", type(raw).__name__)
    return raw


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply `a.b[2].c=value` (YAML value); a list of named stages may be indexed by stage name."""
    if "=" not in assignment:
        raise SpecError(f"--set {assignment}", "an override needs '='", "path=value", assignment)
    path, text = assignment.split("=", 1)
    keys = [k for k in path.replace("[", ".").replace("]", "").split(".") if k]
    if not keys:
        raise SpecError("--set", "an override needs a field path before '='", "path=value, e.g. runtime.seed=1",
                        repr(assignment))
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = str(e).splitlines()[0]
        raise SpecError(f"--set {path}", f"the value is not valid YAML ({problem})", "a YAML value",
                        repr(text)) from None
    set_field(raw, path, value, f"--set {path}")


def set_field(raw: dict[str, Any], path: str, value: Any, where: str | None = None) -> None:
    """Set the field at dotted path `path` (`stages.rl.lr`, `stages[0].lr`) of a raw spec to `value`.

    Missing mappings on the way are created (validation then names an unknown field); `where` prefixes errors.
    """
    where = where or path
    keys = [k for k in path.replace("[", ".").replace("]", "").split(".") if k]
    if not keys:
        raise SpecError(where, "empty field path", "a dotted path such as stages.pretrain.lr", repr(path))
    node: Any = raw
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        here = ".".join(keys[: i + 1])
        if isinstance(node, list):
            idx = _list_index(node, key, here, where)
            if last:
                node[idx] = value
            node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise SpecError(where, f"cannot descend into '{here}'", "a mapping or list", type(node).__name__)


def _list_index(items: list[Any], key: str, here: str, where: str) -> int:
    if key.lstrip("-").isdigit():
        idx = int(key)
        if -len(items) <= idx < len(items):
            return idx
        raise SpecError(f"{where} ({here})", "index out of range", f"0..{len(items) - 1}", key)
    names = [it.get("name") if isinstance(it, dict) else None for it in items]
    if key in names:
        return names.index(key)
    raise SpecError(f"{where} ({here})", "no list item with that name", "one of " + ", ".join(map(str, names)),
                    key)


FIELD_IN_MESSAGE = re.compile(r"^Value error, (?P<field>[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*): (?P<problem>.*)$",
                              re.S)
"""A model validator's ValueError message that starts with the field it is about."""


def validate_spec(raw: dict[str, Any]) -> PipelineSpec:
    """Validate a raw dict; the first error becomes a SpecError naming the field path."""
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as e:
        raise _spec_error(e, raw) from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> PipelineSpec:
    """Read, override and validate a spec file."""
    raw = read_spec_file(path)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return validate_spec(raw)


def _spec_error(e: ValidationError, raw: dict[str, Any]) -> SpecError:
    errors = e.errors(include_url=False)
    first = errors[0]
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, CrossReferenceError):
        return SpecError(cause.path, cause.problem, cause.expected, cause.found)
    if isinstance(cause, FieldError):
        where = ".".join(filter(None, (field_path(first["loc"], raw), cause.field)))
        found = cause.found if cause.found is not None else _short(_value_at(raw, where))
        return SpecError(where, cause.problem, cause.expected, found)
    if first["type"] == "union_tag_invalid":
        tag = first["ctx"]["discriminator"].strip("'")
        where = field_path(first["loc"], raw) + f".{tag}"
        expected = f"one of {first['ctx']['expected_tags']}"
        return SpecError(where, "unknown choice", expected, _short(first["input"].get(tag)))
    named = FIELD_IN_MESSAGE.match(first["msg"]) if first["type"] == "value_error" else None
    if named:  # a model validator's "field: problem" message: name the field in the path
        where = ".".join(filter(None, (field_path(first["loc"], raw), named["field"])))
        return SpecError(where, named["problem"], None, _short(_value_at(raw, where)))
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    found = "nothing" if first["type"] == "missing" else _short(first.get("input"))
    return SpecError(field_path(first["loc"], raw), _problem(first) + more, _expected(first), found)


def field_path(loc: tuple[Any, ...], raw: Any) -> str:
    """Turn a pydantic error location into `stages[1].objective.kind`, skipping union tags."""
    out, node = "", raw
    for part in loc:
        if isinstance(part, int) and isinstance(node, list):
            out += f"[{part}]"
            node = node[part] if part < len(node) else None
        elif isinstance(node, dict) and part in node:
            out += f".{part}" if out else str(part)
            node = node[part]
        elif isinstance(node, dict) and _is_tag(node, part):
            continue
        else:
            out += f".{part}" if out else str(part)
            node = None
    return out or "spec"


def _value_at(raw: Any, path: str) -> Any:
    """The raw value at a field path such as `stages[1].classes` (None where it does not exist)."""
    node = raw
    for key in path.replace("[", ".").replace("]", "").split("."):
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            return None
    return node


def _is_tag(node: dict[str, Any], part: Any) -> bool:
    tags = (node.get(k) for k in ("stage", "kind", "arch", "algorithm", "method"))
    return part in {t for t in tags if isinstance(t, str)}


def _problem(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        return "unknown choice"
    if kind == "union_tag_not_found":
        return "the choice field is missing"
    return err["msg"]


def _expected(err: dict[str, Any]) -> str | None:
    ctx = err.get("ctx", {})
    if err["type"] == "union_tag_not_found":
        return f"a '{ctx.get('discriminator')}' field"
    if err["type"] == "extra_forbidden":
        return "a field of this schema (see `diffpipe schema`)"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
