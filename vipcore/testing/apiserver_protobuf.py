"""Kubernetes protobuf request bodies, for the few built-in kinds kubectl creates with them.

kubectl 1.37 sends ``application/vnd.kubernetes.protobuf`` bodies for built-in
kinds (``kubectl create service``, ``kubectl create namespace``) and does not
fall back to JSON on a 415. This decodes those bodies into the JSON shape the
store takes: the ``k8s\\x00`` magic, the ``runtime.Unknown`` envelope, then the
object by the field numbers of ``k8s.io/api/core/v1/generated.proto``. A body
with a kind or a field not described here raises :class:`Unsupported` (the
server answers 415), never a guess. Empty strings, zero numbers and empty
messages are left out, as JSON's ``omitempty`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAGIC = b"k8s\x00"


class Unsupported(ValueError):
    """A protobuf body this decoder does not describe (the server answers 415)."""


# A message is {field number: (JSON name, kind)}; kind is "string", "int", "bool", "bytes",
# ("message", schema), ("repeated", kind) or ("map", value kind). Maps are string -> string here.
_TIME: dict[int, tuple[str, Any]] = {1: ("seconds", "int"), 2: ("nanos", "int")}
_OWNER_REFERENCE: dict[int, tuple[str, Any]] = {
    1: ("kind", "string"), 3: ("name", "string"), 4: ("uid", "string"), 5: ("apiVersion", "string"),
    6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool")}
_OBJECT_META: dict[int, tuple[str, Any]] = {
    1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"), 4: ("selfLink", "string"),
    5: ("uid", "string"), 6: ("resourceVersion", "string"), 7: ("generation", "int"),
    8: ("creationTimestamp", ("message", _TIME)), 9: ("deletionTimestamp", ("message", _TIME)),
    10: ("deletionGracePeriodSeconds", "int"), 11: ("labels", ("map", "string")),
    12: ("annotations", ("map", "string")), 13: ("ownerReferences", ("repeated", ("message", _OWNER_REFERENCE))),
    14: ("finalizers", ("repeated", "string"))}
_INT_OR_STRING: dict[int, tuple[str, Any]] = {1: ("type", "int"), 2: ("intVal", "int"), 3: ("strVal", "string")}
_SERVICE_PORT: dict[int, tuple[str, Any]] = {
    1: ("name", "string"), 2: ("protocol", "string"), 3: ("port", "int"),
    4: ("targetPort", ("message", _INT_OR_STRING)), 5: ("nodePort", "int"), 6: ("appProtocol", "string")}
_SERVICE_SPEC: dict[int, tuple[str, Any]] = {
    1: ("ports", ("repeated", ("message", _SERVICE_PORT))), 2: ("selector", ("map", "string")),
    3: ("clusterIP", "string"), 4: ("type", "string"), 5: ("externalIPs", ("repeated", "string")),
    7: ("sessionAffinity", "string"), 8: ("loadBalancerIP", "string"),
    9: ("loadBalancerSourceRanges", ("repeated", "string")), 10: ("externalName", "string"),
    11: ("externalTrafficPolicy", "string"), 12: ("healthCheckNodePort", "int"),
    13: ("publishNotReadyAddresses", "bool"), 17: ("ipFamilyPolicy", "string"),
    18: ("clusterIPs", ("repeated", "string")), 19: ("ipFamilies", ("repeated", "string")),
    20: ("allocateLoadBalancerNodePorts", "bool"), 21: ("loadBalancerClass", "string"),
    22: ("internalTrafficPolicy", "string"), 23: ("trafficDistribution", "string")}
_LOAD_BALANCER_STATUS: dict[int, tuple[str, Any]] = {
    1: ("ingress", ("repeated", ("message", {1: ("ip", "string"), 2: ("hostname", "string"),
                                             3: ("ipMode", "string")})))}
_SERVICE: dict[int, tuple[str, Any]] = {
    1: ("metadata", ("message", _OBJECT_META)), 2: ("spec", ("message", _SERVICE_SPEC)),
    3: ("status", ("message", {1: ("loadBalancer", ("message", _LOAD_BALANCER_STATUS))}))}
_NAMESPACE: dict[int, tuple[str, Any]] = {
    1: ("metadata", ("message", _OBJECT_META)),
    2: ("spec", ("message", {1: ("finalizers", ("repeated", "string"))})),
    3: ("status", ("message", {1: ("phase", "string")}))}

#: Booleans that are pointers in Go: an explicit false is kept (others are omitempty).
_POINTER_BOOLS = frozenset({"allocateLoadBalancerNodePorts", "controller", "blockOwnerDeletion"})

#: (apiVersion, kind) -> the message schema.
KINDS: dict[tuple[str, str], dict[int, tuple[str, Any]]] = {
    ("v1", "Service"): _SERVICE,
    ("v1", "Namespace"): _NAMESPACE,
}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise Unsupported("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) in order; length-delimited values as bytes."""
    out = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise Unsupported(f"wire type {wire}")
        out.append((number, wire, value))
    return out


def _scalar(kind: str, wire: int, value: Any) -> Any:
    if kind == "string":
        if wire != 2:
            raise Unsupported("a string field is not length-delimited")
        return bytes(value).decode()
    if kind == "int":
        if wire != 0:
            raise Unsupported("an integer field is not a varint")
        return value - (1 << 64) if value >= 1 << 63 else value
    if kind == "bool":
        return bool(value)
    raise Unsupported(f"field kind {kind!r}")


def _message(data: bytes, schema: Mapping[int, tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for number, wire, value in _fields(data):
        if number not in schema:
            raise Unsupported(f"field {number} is not described")
        name, kind = schema[number]
        if isinstance(kind, tuple) and kind[0] == "repeated":
            obj.setdefault(name, []).append(_value(kind[1], wire, value))
        elif isinstance(kind, tuple) and kind[0] == "map":
            entry = {n: v for n, _, v in _fields(value)}
            obj.setdefault(name, {})[bytes(entry.get(1, b"")).decode()] = bytes(entry.get(2, b"")).decode()
        else:
            obj[name] = _value(kind, wire, value)
    return {k: v for k, v in obj.items()
            if v is True or (k in _POINTER_BOOLS and v is False) or (not isinstance(v, bool) and v not in ("", 0, {}))}


def _value(kind: Any, wire: int, value: Any) -> Any:
    if isinstance(kind, tuple) and kind[0] == "message":
        if wire != 2:
            raise Unsupported("a message field is not length-delimited")
        return _message(value, kind[1])
    return _scalar(kind, wire, value)


def _int_or_string(value: Any) -> Any:
    if isinstance(value, dict) and set(value) <= {"type", "intVal", "strVal"}:
        return value.get("strVal", "") if value.get("type") == 1 else value.get("intVal", 0)
    return value


def decode(body: bytes) -> dict[str, Any]:
    """The JSON-shaped object of a protobuf request body; :class:`Unsupported` if not described here."""
    if not body.startswith(MAGIC):
        raise Unsupported("the body does not start with the Kubernetes protobuf magic")
    envelope = {n: v for n, _, v in _fields(body[len(MAGIC):])}
    type_meta = {n: bytes(v).decode() for n, _, v in _fields(envelope.get(1, b""))}
    api_version, kind = type_meta.get(1, ""), type_meta.get(2, "")
    schema = KINDS.get((api_version, kind))
    if schema is None:
        raise Unsupported(f"{api_version} {kind} bodies in protobuf")
    obj = _message(envelope.get(2, b""), schema)
    for port in (obj.get("spec") or {}).get("ports") or []:
        if "targetPort" in port:
            port["targetPort"] = _int_or_string(port["targetPort"])
    meta = obj.get("metadata") or {}
    for stamp in ("creationTimestamp", "deletionTimestamp"):
        meta.pop(stamp, None)  # the server sets these
    return {"apiVersion": api_version, "kind": kind, **obj}
