"""Structural OpenAPI v3 schemas of CustomResourceDefinitions: pruning and validation.

The subset the real API server applies to custom resources and vipcore's
CRDs use: types, properties, required, items, enum, minimum/maximum,
min/max length and items, pattern, additionalProperties,
``x-kubernetes-preserve-unknown-fields`` and ``x-kubernetes-int-or-string``.
Unknown fields are pruned (dropped silently), as upstream does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def prune(value: Any, schema: Mapping[str, Any]) -> Any:
    """``value`` without the fields ``schema`` does not declare, with declared defaults filled in."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            props = schema.get("properties") or {}
            return {k: prune(v, props[k]) if k in props else v for k, v in value.items()}
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is not None:
            pruned = {k: prune(v, props[k]) for k, v in value.items() if k in props}
            for key, sub in props.items():
                if key not in pruned and isinstance(sub, Mapping) and "default" in sub:
                    pruned[key] = sub["default"]  # structural defaulting, as upstream
            return pruned
        if isinstance(extra, Mapping):
            return {k: prune(v, extra) for k, v in value.items()}
        if extra is True:
            return value
        return {} if schema.get("type") == "object" else value
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [prune(v, schema["items"]) for v in value]
    return value


def unknown_fields(value: Any, schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Paths of the fields pruning would drop (what ``fieldValidation=Strict`` refuses)."""
    found: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if props is not None and key in props:
                found.extend(unknown_fields(item, props[key], where))
            elif isinstance(extra, Mapping):
                found.extend(unknown_fields(item, extra, where))
            elif not (schema.get("x-kubernetes-preserve-unknown-fields") or extra is True):
                found.append(where)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            found.extend(unknown_fields(item, schema["items"], f"{path}[{i}]"))
    return found


def validate(value: Any, schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Messages in the API server's style (``spec.vrid: Invalid value: ...``), empty when valid."""
    where = path or "<root>"
    if value is None:
        return [] if schema.get("nullable") else [f"{where}: Invalid value: \"null\": must not be null"]
    errors: list[str] = []
    expected = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            return [f"{where}: Invalid value: must be an integer or a string"]
    elif expected in _TYPES:
        ok = isinstance(value, _TYPES[expected])
        if expected in ("integer", "number") and isinstance(value, bool):
            ok = False
        if expected == "integer" and isinstance(value, float) and value.is_integer():
            ok = True
        if not ok:
            return [f'{where}: Invalid value: "{type(value).__name__}": {where} in body must be of type {expected}']
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(f'"{v}"' for v in schema["enum"])
        errors.append(f'{where}: Unsupported value: {value!r}: supported values: {allowed}')
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: Invalid value: {value}: {where} in body should be greater than or equal "
                          f"to {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: Invalid value: {value}: {where} in body should be less than or equal "
                          f"to {schema['maximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: Invalid value: {value!r}: should be at least {schema['minLength']} chars long")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: Too long: may not be longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: Invalid value: {value!r}: {where} in body should match '{schema['pattern']}'")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: Invalid value: {len(value)}: {where} in body should have at least "
                          f"{schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
        items = schema.get("items")
        if isinstance(items, Mapping):
            for i, item in enumerate(value):
                errors.extend(validate(item, items, f"{path}[{i}]"))
    if isinstance(value, dict):
        for key in schema.get("required") or ():
            if key not in value:
                errors.append(f"{path + '.' if path else ''}{key}: Required value")
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, Mapping) else None)
            if isinstance(sub, Mapping):
                errors.extend(validate(item, sub, f"{path + '.' if path else ''}{key}"))
    return errors
