"""Kubernetes objects (plain dicts) to vipcore model values and back: the only place this happens.

Functions take objects as plain dicts, the way they come from YAML files, from
``ApiClient.sanitize_for_serialization`` or from ``CustomObjectsApi``. Every
validation failure is a :class:`~vipcore.core.errors.ManifestError` naming the
object and the field.
"""

from __future__ import annotations

import difflib
import ipaddress
import itertools
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from vipcore.core.errors import ManifestError
from vipcore.core.yamldocs import show
from vipcore.core.model import (
    IP_ANNOTATION,
    LOAD_BALANCER_CLASS,
    POOL_ANNOTATION,
    DesiredState,
    EndpointSlice,
    Family,
    IPAddress,
    Node,
    Pool,
    Service,
    Shard,
    TrafficPolicy,
    VipGroup,
)

#: OpenELB's opt-in and selection annotations, honoured for migration.
OPENELB_OPT_IN = "lb.kubesphere.io/v1alpha1"
OPENELB_POOL = "eip.openelb.kubesphere.io/v1alpha2"
OPENELB_IP = "eip.openelb.kubesphere.io/v1alpha1"
OPENELB_DEFAULT_POOL = "eip.openelb.kubesphere.io/is-default-eip"
#: MetalLB's IP sharing annotation: Services with the same value may share an address.
SHARED_IP_ANNOTATION = "metallb.universe.tf/allow-shared-ip"

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: The keys of a VipPool's spec (deploy/crds/vipcore.io_vippools.yaml).
POOL_KEYS = ("addresses", "interface", "default", "disabled", "nodeSelector", "namespaces")

Obj = Mapping[str, Any]


def describe(obj: Obj) -> str:
    """``Kind namespace/name`` for messages (whatever types the fields have)."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name = meta.get("name")
    name = name if isinstance(name, str) and name else "<unnamed>"
    ns = meta.get("namespace")
    ns = ns if isinstance(ns, str) else None
    kind = obj.get("kind")
    kind = kind if isinstance(kind, str) and kind else "object"
    return f"{kind} {ns + '/' if ns else ''}{name}"


def _fail(obj: Obj, field: str, message: str) -> ManifestError:
    return ManifestError(message, source=describe(obj), field=field)


def _is_mapping(value: Any) -> bool:
    # Nearly every mapping is a plain dict: skip the ABC check (a fifth of a 20k-object conversion).
    return type(value) is dict or isinstance(value, Mapping)


def _mapping(obj: Obj, field: str, value: Any) -> Mapping[str, Any]:
    if type(value) is dict:
        return value
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(obj, field, f"expected a mapping, got {type(value).__name__}")
    return value


def _bool(obj: Obj, field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(obj, field, f"must be true or false, got {show(value)}")
    return value


def _list(obj: Obj, field: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(obj, field, f"expected a list, got {type(value).__name__}")
    return value


def _name(obj: Obj) -> str:
    meta = _mapping(obj, "metadata", obj.get("metadata"))
    name = meta.get("name")
    if name is None or name == "":
        raise _fail(obj, "metadata.name", "is missing")
    if not isinstance(name, str):
        raise _fail(obj, "metadata.name", f"must be a string, got {show(name)}")
    return name


def _namespace(obj: Obj) -> str:
    meta = _mapping(obj, "metadata", obj.get("metadata"))
    namespace = meta.get("namespace")
    if namespace is None or namespace == "":
        return "default"
    if not isinstance(namespace, str):
        raise _fail(obj, "metadata.namespace", f"must be a string, got {show(namespace)}")
    return namespace


_SCALARS = (str, int, float, bool)


def _str_map(obj: Obj, field: str, value: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in _mapping(obj, field, value).items():
        # Kubernetes wants strings; a number or a boolean (an unquoted YAML scalar) is taken as its text.
        if not isinstance(k, _SCALARS) or not isinstance(v, _SCALARS):
            raise _fail(obj, f"{field}[{show(k)}]", f"must be a string, got {show(v)}")
        out[str(k)] = str(v)
    return out


def _address(obj: Obj, field: str, text: Any) -> IPAddress:
    if not isinstance(text, str):
        raise _fail(obj, field, f"must be an IP address (a string), got {show(text)}")
    try:
        # An address with a colon can only be IPv6: ``ip_address`` would first fail to read it as IPv4.
        text = text.strip()
        return ipaddress.IPv6Address(text) if ":" in text else ipaddress.IPv4Address(text)
    except ValueError:
        raise _fail(obj, field, f"{show(text)} is not an IP address") from None


def node_from_k8s(obj: Obj) -> Node:
    """A ``v1 Node``: Ready condition, InternalIP/ExternalIP addresses, labels."""
    name = _name(obj)
    meta = _mapping(obj, "metadata", obj.get("metadata"))
    status = _mapping(obj, "status", obj.get("status"))
    ready = False
    for cond in _list(obj, "status.conditions", status.get("conditions")):
        if _is_mapping(cond) and cond.get("type") == "Ready":
            ready = cond.get("status") in ("True", True)
    addresses: list[IPAddress] = []
    for i, entry in enumerate(_list(obj, "status.addresses", status.get("addresses"))):
        if not _is_mapping(entry):
            raise _fail(obj, f"status.addresses[{i}]", "expected a mapping")
        if entry.get("type") in ("InternalIP", "ExternalIP"):  # type may be anything: compared, never hashed
            addresses.append(_address(obj, f"status.addresses[{i}].address", entry.get("address")))
    # A cordoned (unschedulable) node still forwards traffic: it stays eligible.
    return Node(name=name, addresses=tuple(addresses), ready=ready,
                labels=_str_map(obj, "metadata.labels", meta.get("labels")))


def _split_ips(obj: Obj, field: str, text: str) -> tuple[IPAddress, ...]:
    parts = [p for p in (s.strip() for s in text.split(",")) if p]
    ips = tuple(_address(obj, field, p) for p in parts)
    families = [ip.version for ip in ips]
    if len(families) != len(set(families)):
        raise _fail(obj, field, "request at most one address per family")
    return ips


_POLICIES = {policy.value: policy for policy in TrafficPolicy}
_IP_ANNOTATION_FIELD = f"metadata.annotations[{IP_ANNOTATION}]"
_OPENELB_IP_FIELD = f"metadata.annotations[{OPENELB_IP}]"


def service_from_k8s(obj: Obj) -> Service:
    """A ``v1 Service`` of type LoadBalancer."""
    name = _name(obj)
    meta = _mapping(obj, "metadata", obj.get("metadata"))
    namespace = _namespace(obj)
    annotations = _str_map(obj, "metadata.annotations", meta.get("annotations"))
    spec = _mapping(obj, "spec", obj.get("spec"))
    status = _mapping(obj, "status", obj.get("status"))

    policy_text = spec.get("externalTrafficPolicy") or "Cluster"
    policy = _POLICIES.get(policy_text) if isinstance(policy_text, str) else None
    if policy is None:
        raise _fail(obj, "spec.externalTrafficPolicy", f"must be Cluster or Local, got {show(policy_text)}")

    requested: tuple[IPAddress, ...] = ()
    for field, text in (
        (_IP_ANNOTATION_FIELD, annotations.get(IP_ANNOTATION)),
        (_OPENELB_IP_FIELD, annotations.get(OPENELB_IP)),
        ("spec.loadBalancerIP", spec.get("loadBalancerIP")),
    ):
        if text:
            if not isinstance(text, str):
                raise _fail(obj, field, f"must be a string of addresses, got {show(text)}")
            requested = _split_ips(obj, field, text)
            break

    pool = annotations.get(POOL_ANNOTATION) or annotations.get(OPENELB_POOL) or None

    # Sharing: MetalLB's explicit key; else OpenELB Services asking for the same address share it.
    sharing_key = annotations.get(SHARED_IP_ANNOTATION) or None
    if sharing_key is None and annotations.get(OPENELB_OPT_IN) == "openelb" and annotations.get(OPENELB_IP):
        sharing_key = "openelb:" + ",".join(sorted(str(ip) for ip in requested))

    vips: list[IPAddress] = []
    lb = _mapping(obj, "status.loadBalancer", status.get("loadBalancer"))
    for i, entry in enumerate(_list(obj, "status.loadBalancer.ingress", lb.get("ingress"))):
        if _is_mapping(entry) and entry.get("ip"):
            vips.append(_address(obj, f"status.loadBalancer.ingress[{i}].ip", entry["ip"]))

    families: list[Family] = []
    for i, fam in enumerate(_list(obj, "spec.ipFamilies", spec.get("ipFamilies"))):
        if fam == "IPv4":
            families.append(Family.IPV4)
        elif fam == "IPv6":
            families.append(Family.IPV6)
        else:
            raise _fail(obj, f"spec.ipFamilies[{i}]", f"must be IPv4 or IPv6, got {show(fam)}")
    if families and spec.get("ipFamilyPolicy") in (None, "SingleStack"):
        families = families[:1]

    ports: list[tuple[str, int]] = []
    for i, port in enumerate(_list(obj, "spec.ports", spec.get("ports"))):
        number = port.get("port") if _is_mapping(port) else None
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
            raise _fail(obj, f"spec.ports[{i}].port", f"must be an integer in 1..65535, got {show(number)}")
        protocol = port.get("protocol") or "TCP"
        if not isinstance(protocol, str):
            raise _fail(obj, f"spec.ports[{i}].protocol", f"must be a string, got {show(protocol)}")
        ports.append((protocol, number))
    require_dual_stack = spec.get("ipFamilyPolicy") == "RequireDualStack"

    return Service(
        namespace=namespace,
        name=name,
        traffic_policy=policy,
        requested_ips=requested,
        pool=pool,
        vips=tuple(vips),
        families=tuple(families),
        ports=tuple(ports),
        sharing_key=sharing_key,
        require_dual_stack=require_dual_stack,
    )


def openelb_eip(obj: Obj, eips: Iterable[Obj]) -> Obj | None:
    """The Eip OpenELB would serve this OpenELB Service from, by OpenELB's own rules; None if none.

    The Eip named by ``eip.openelb.kubesphere.io/v1alpha2``; else the Eip
    containing the address requested by ``eip.openelb.kubesphere.io/v1alpha1``
    (or ``spec.loadBalancerIP``); else an enabled Eip listing the Service's
    namespace in ``spec.namespaces``; else the enabled default Eip. Eips whose
    addresses do not parse are skipped.
    """
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    namespace = str(meta.get("namespace") or "default")
    by_name = {str((e.get("metadata") or {}).get("name")): e for e in eips}
    named = annotations.get(OPENELB_POOL)
    if named:
        return by_name.get(str(named))
    wanted = annotations.get(OPENELB_IP) or (obj.get("spec") or {}).get("loadBalancerIP")
    if wanted:
        try:
            ips = [ipaddress.ip_address(p.strip()) for p in str(wanted).split(",") if p.strip()]
        except ValueError:
            return None
        for name in sorted(by_name):
            ranges = _eip_ranges(by_name[name])
            if ips and all(any(a.version == ip.version and a <= ip <= b for a, b in ranges)  # type: ignore[operator]
                           for ip in ips):
                return by_name[name]
        return None
    enabled = [by_name[n] for n in sorted(by_name) if not (by_name[n].get("spec") or {}).get("disable")]
    for eip in enabled:
        if namespace in ((eip.get("spec") or {}).get("namespaces") or []):
            return eip
    for eip in enabled:
        ann = (eip.get("metadata") or {}).get("annotations") or {}
        if str(ann.get(OPENELB_DEFAULT_POOL, "false")).lower() == "true":
            return eip
    return None


def _eip_ranges(eip: Obj) -> list[tuple[IPAddress, IPAddress]]:
    try:
        return [parse_range(str((eip.get("spec") or {}).get("address") or ""))]
    except ValueError:
        return []


def openelb_foreign(obj: Obj, eips: Iterable[Obj]) -> bool:
    """Whether an OpenELB Service belongs to OpenELB itself: its Eip's protocol is not ``vip`` (bgp, layer2)."""
    eip = openelb_eip(obj, eips)
    return eip is not None and (eip.get("spec") or {}).get("protocol", "bgp") != "vip"


def service_wanted(obj: Obj, *, classes: frozenset[str], default_class: bool, openelb: bool = True,
                   eips: Iterable[Obj] | None = None) -> bool:
    """Whether vipcore should serve this Service object.

    ``type: LoadBalancer`` and either ``spec.loadBalancerClass`` in ``classes``,
    no class while vipcore is the default implementation, or (``openelb``)
    OpenELB's opt-in annotation with no class, unless (``eips`` given) the Eip
    OpenELB picks for it is a ``bgp`` or ``layer2`` one: those are OpenELB's.
    """
    spec = _mapping(obj, "spec", obj.get("spec"))
    if spec.get("type") != "LoadBalancer":
        return False
    cls = spec.get("loadBalancerClass")
    if cls:
        return isinstance(cls, str) and cls in classes
    meta = _mapping(obj, "metadata", obj.get("metadata"))
    annotations = _mapping(obj, "metadata.annotations", meta.get("annotations"))
    if openelb and annotations.get(OPENELB_OPT_IN) == "openelb":
        return eips is None or not openelb_foreign(obj, eips)
    return default_class


def endpoint_slice_from_k8s(obj: Obj) -> EndpointSlice:
    """A ``discovery.k8s.io/v1 EndpointSlice``: the nodes with ready endpoints."""
    name = _name(obj)
    meta = _mapping(obj, "metadata", obj.get("metadata"))
    labels = _str_map(obj, "metadata.labels", meta.get("labels"))
    service = labels.get(SERVICE_NAME_LABEL)
    if not service:
        raise _fail(obj, f"metadata.labels[{SERVICE_NAME_LABEL}]", "is missing")
    ready: set[str] = set()
    for i, ep in enumerate(_list(obj, "endpoints", obj.get("endpoints"))):
        if not _is_mapping(ep):
            raise _fail(obj, f"endpoints[{i}]", "expected a mapping")
        conditions = ep.get("conditions")
        if type(conditions) is not dict:  # the field's name built only when it may be needed
            conditions = _mapping(obj, f"endpoints[{i}].conditions", conditions)
        node = ep.get("nodeName")
        if node is not None and not isinstance(node, str):
            raise _fail(obj, f"endpoints[{i}].nodeName", f"must be a string, got {show(node)}")
        # Per the API, an unset ready condition means ready.
        if conditions.get("ready", True) is not False and node:
            ready.add(node)
    return EndpointSlice(namespace=_namespace(obj), name=name,
                         service=service, ready_nodes=frozenset(ready))


def parse_range(text: str, *, strict: bool = True) -> tuple[IPAddress, IPAddress]:
    """One pool entry: an address, a CIDR (network and broadcast left out) or ``a-b``.

    Raises ValueError with a precise message; with ``strict``, also for a CIDR
    with host bits set (``198.51.100.5/24``), which is usually a typo.
    """
    text = text.strip()
    if "-" in text:
        first_text, _, last_text = text.partition("-")
        first = ipaddress.ip_address(first_text.strip())
        last = ipaddress.ip_address(last_text.strip())
        if first.version != last.version:
            raise ValueError(f"range {text!r} mixes IPv4 and IPv6")
        if last < first:  # type: ignore[operator]
            raise ValueError(f"range {text!r} ends before it starts")
        return first, last
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=strict)
        except ValueError as exc:
            if "host bits set" not in str(exc):
                raise
            meant = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"{text!r} has host bits set; did you mean {meant}?") from None
        if net.version == 4 and net.prefixlen <= 30:
            return net.network_address + 1, net.broadcast_address - 1
        if net.version == 6 and net.prefixlen <= 126:
            # IPv6 has no broadcast; the subnet-router anycast (first) address is skipped.
            return net.network_address + 1, net.broadcast_address
        return net.network_address, net.broadcast_address
    addr = ipaddress.ip_address(text)
    return addr, addr


def pool_from_k8s(obj: Obj) -> Pool:
    """A ``vipcore.io/v1alpha1 VipPool`` or an OpenELB ``Eip`` with ``protocol: vip``."""
    name = _name(obj)
    spec = _mapping(obj, "spec", obj.get("spec"))
    kind = obj.get("kind")
    if kind == "Eip":
        entries: list[Any] = [spec.get("address")] if spec.get("address") else []
        protocol = spec.get("protocol", "bgp")
        if protocol != "vip":
            raise _fail(obj, "spec.protocol", f"only 'vip' Eips can be used by vipcore, got {show(protocol)}")
        disabled = _bool(obj, "spec.disable", spec.get("disable", False))
        meta = _mapping(obj, "metadata", obj.get("metadata"))
        annotations = _str_map(obj, "metadata.annotations", meta.get("annotations"))
        default = annotations.get(OPENELB_DEFAULT_POOL, "false").lower() == "true"
        field = "spec.address"
        # OpenELB: spec.namespaces picks the Eip for those namespaces' Services; it restricts nobody.
        auto_namespaces = frozenset(str(n) for n in _list(obj, "spec.namespaces", spec.get("namespaces")))
        namespaces: frozenset[str] = frozenset()
    else:
        unknown = sorted(str(k) for k in spec if k not in POOL_KEYS)
        if unknown:
            hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, POOL_KEYS, 1))
                     else repr(k) for k in unknown]
            raise _fail(obj, "spec", f"unknown key(s) {', '.join(hints)}; known keys: {', '.join(POOL_KEYS)}")
        entries = _list(obj, "spec.addresses", spec.get("addresses"))
        disabled = _bool(obj, "spec.disabled", spec.get("disabled", False))
        default = _bool(obj, "spec.default", spec.get("default", False))
        field = "spec.addresses"
        auto_namespaces = frozenset()
        namespaces = frozenset(str(n) for n in _list(obj, "spec.namespaces", spec.get("namespaces")))
    if not entries:
        raise _fail(obj, field, "lists no address")
    ranges = []
    for i, entry in enumerate(entries):
        where = f"{field}[{i}]" if kind != "Eip" else field
        if not isinstance(entry, str):
            raise _fail(obj, where, f"must be an address, CIDR or range (a string), got {show(entry)}")
        try:
            # OpenELB reads an Eip's CIDR with host bits as its network: Eips keep working when migrated.
            ranges.append(parse_range(entry, strict=kind != "Eip"))
        except ValueError as exc:
            raise _fail(obj, where, str(exc)) from None
    interface = spec.get("interface")
    if not isinstance(interface, str) or not interface:
        raise _fail(obj, "spec.interface", "is missing")
    if interface.startswith("can_reach:"):
        raise _fail(obj, "spec.interface", "can_reach: is not supported; name the interface")
    meta = _mapping(obj, "metadata", obj.get("metadata"))
    for i, namespace in enumerate(_list(obj, "spec.namespaces", spec.get("namespaces"))):
        if not isinstance(namespace, str) or not namespace:
            raise _fail(obj, f"spec.namespaces[{i}]", f"must be a namespace name, got {show(namespace)}")
    try:
        return Pool(
            name=name,
            ranges=tuple(ranges),
            interface=interface,
            default=default,
            node_selector=_str_map(obj, "spec.nodeSelector", spec.get("nodeSelector")),
            disabled=disabled,
            namespaces=namespaces,
            auto_namespaces=auto_namespaces,
            deleting=bool(meta.get("deletionTimestamp")),
        )
    except ValueError as exc:
        raise _fail(obj, "spec.interface", str(exc)) from None


def pinned_vrid(obj: Obj) -> tuple[str, int]:
    """A ``VipGroup`` object's (name, spec.vrid): persisted or pinned VRIDs."""
    name = _name(obj)
    spec = _mapping(obj, "spec", obj.get("spec"))
    vrid = spec.get("vrid")
    if not isinstance(vrid, int) or isinstance(vrid, bool) or not 1 <= vrid <= 255:
        raise _fail(obj, "spec.vrid", f"must be an integer in 1..255, got {show(vrid)}")
    return name, vrid


def family_key(family: Family) -> str:
    """The key of a family in a VipGroup's ``spec.vips`` and ``status.holders``: ``ipv4`` or ``ipv6``."""
    return "ipv4" if family is Family.IPV4 else "ipv6"


def vipgroup_spec(group: VipGroup) -> dict[str, Any]:
    """The ``spec`` of the VipGroup object of a resolved group: the one VipGroup serializer.

    (Also the group part of ``vipcore resolve -o json``.) ``vrid`` is None for a
    group without one; the API refuses such a VipGroup.
    """
    spec: dict[str, Any] = {
        "interface": group.interface,
        "nodes": list(group.nodes),
        "vrid": group.vrid,
        "vips": {family_key(Family.IPV4): [str(ip) for ip in group.vips_v4],
                 family_key(Family.IPV6): [str(ip) for ip in group.vips_v6]},
        "services": list(group.services),
    }
    if group.shard is not None:  # only then: an unsharded group's spec is what it always was
        spec["shard"] = {"set": group.shard.key, "index": group.shard.index, "count": group.shard.count}
    return spec


def _shard(obj: Obj, value: Any) -> Shard | None:
    if value is None:
        return None
    shard = _mapping(obj, "spec.shard", value)
    key, index, count = shard.get("set"), shard.get("index"), shard.get("count")
    if not isinstance(key, str) or not key:
        raise _fail(obj, "spec.shard.set", f"must be the shard set's key, got {show(key)}")
    for field, number in (("index", index), ("count", count)):
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise _fail(obj, f"spec.shard.{field}", f"must be a whole number, got {show(number)}")
    try:
        return Shard(key, int(index), int(count))  # type: ignore[arg-type]  # checked above
    except ValueError as exc:
        raise _fail(obj, "spec.shard.index", str(exc)) from None


def vipgroup_from_k8s(obj: Obj, parsed: Mapping[Family, MutableMapping[str, IPAddress]] | None = None) -> VipGroup:
    """A ``VipGroup`` object as the controller wrote it (:func:`vipgroup_spec`): the group an agent in
    the VipGroup view joins, without resolving anything itself.

    ``parsed``: per family, addresses already parsed (and checked to be of that family), by their
    text; read and extended. A group of 25,000 VIPs that gained one parses one address, not 25,000
    (``ipaddress`` takes microseconds each), and the group reuses the same address objects.
    """
    name, vrid = pinned_vrid(obj)
    spec = _mapping(obj, "spec", obj.get("spec"))
    nodes = _list(obj, "spec.nodes", spec.get("nodes"))
    try:
        names_valid = all(map(str.__len__, nodes))  # C speed: 5,000 names; not empty
    except TypeError:  # not a string
        names_valid = False
    if not names_valid:
        i = next(i for i, n in enumerate(nodes) if not isinstance(n, str) or not n)
        raise _fail(obj, f"spec.nodes[{i}]", f"must be a node name, got {show(nodes[i])}")
    services = _list(obj, "spec.services", spec.get("services"))
    try:
        keys_valid = all(map(str.__contains__, services, itertools.repeat("/")))  # C speed: 25,000 keys
    except TypeError:  # not a string
        keys_valid = False
    if not keys_valid:
        i = next(i for i, k in enumerate(services) if not isinstance(k, str) or "/" not in k)
        raise _fail(obj, f"spec.services[{i}]", f"must be namespace/name, got {show(services[i])}")
    vips = _mapping(obj, "spec.vips", spec.get("vips") or {})
    found: dict[Family, list[IPAddress]] = {}
    for family in Family:
        field = f"spec.vips.{family_key(family)}"
        texts = _list(obj, field, vips.get(family_key(family)))
        memo: MutableMapping[str, IPAddress] = {} if parsed is None else parsed[family]
        try:
            known = all(map(memo.__contains__, texts))  # C speed; an IPv6Address would hash in Python
        except TypeError:  # something unhashable: the slow path below names it
            known = False
        if not known:
            for i, text in enumerate(texts):
                if isinstance(text, str) and text in memo:
                    continue
                ip = _address(obj, f"{field}[{i}]", text)
                if ip.version != family:
                    raise _fail(obj, f"{field}[{i}]", f"{show(text)} is not an {family.k8s_name} address")
                memo[text] = ip
        found[family] = list(map(memo.__getitem__, texts))
    interface = spec.get("interface")
    if not isinstance(interface, str):
        raise _fail(obj, "spec.interface", f"must be an interface name, got {show(interface)}")
    shard = _shard(obj, spec.get("shard"))
    try:
        return VipGroup(name=name, interface=interface, nodes=tuple(nodes), vrid=vrid,
                        vips_v4=tuple(found[Family.IPV4]),  # type: ignore[arg-type]  # families checked above
                        vips_v6=tuple(found[Family.IPV6]),  # type: ignore[arg-type]
                        services=tuple(services), shard=shard)
    except (TypeError, ValueError) as exc:
        raise _fail(obj, "spec.interface", str(exc)) from None


def _eip_protocol(obj: Obj) -> Any:
    spec = obj.get("spec")
    if spec is None:
        return None
    if not _is_mapping(spec):
        raise _fail(obj, "spec", f"expected a mapping, got {type(spec).__name__}")
    return spec.get("protocol", "bgp")


#: One object as :func:`convert` gives it: ``(kind, value)``, kind one of "Node", "Service",
#: "EndpointSlice", "Pool" (the model value) or "VipGroup" (its name and pinned VRID).
Converted = tuple[str, Any]


def convert(obj: Any, *, classes: frozenset[str] = frozenset({LOAD_BALANCER_CLASS}),
            default_class: bool = True) -> Converted | None:
    """One object (a Node, Service, EndpointSlice, VipPool or ``vip`` Eip, VipGroup) as the value
    :class:`StateBuilder` takes; None for other kinds, Services not served (``classes``,
    ``default_class``) and VipGroup shards other than 0. Raises :class:`ManifestError` naming the object
    and the field.
    """
    if not _is_mapping(obj):
        raise ManifestError(f"not a Kubernetes object (a mapping): {show(obj)}")
    kind = obj.get("kind")
    if kind == "Node":
        return "Node", node_from_k8s(obj)
    if kind == "Service":
        if service_wanted(obj, classes=classes, default_class=default_class):
            return "Service", service_from_k8s(obj)
        return None
    if kind == "EndpointSlice":
        return "EndpointSlice", endpoint_slice_from_k8s(obj)
    if kind == "VipPool" or (kind == "Eip" and _eip_protocol(obj) == "vip"):
        return "Pool", pool_from_k8s(obj)
    if kind == "VipGroup":
        pinned = pinned_vrid(obj)
        shard = (obj.get("spec") or {}).get("shard")
        if not isinstance(shard, Mapping) or not shard.get("index"):  # shard 0 pins its group's
            return "VipGroup", pinned
    return None


class StateBuilder:
    """:func:`convert`'s values, in order, into a :class:`DesiredState`: a later Node of the same name
    wins; a Service or a pool defined twice is a :class:`ManifestError`."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.services: dict[str, Service] = {}
        self.service_origin: dict[str, str] = {}
        self.slices: list[EndpointSlice] = []
        self.pools: dict[str, Pool] = {}
        self.vrids: dict[str, int] = {}

    def add(self, converted: Converted, origin: str | None = None, obj: Obj | None = None) -> None:
        """Add one value; ``origin`` (a file and document) names where a Service came from, ``obj``
        (the object) names what is defined twice."""
        kind, value = converted
        if kind == "Service":
            key = value.key
            if key in self.services:
                first = self.service_origin.get(key)
                raise ManifestError(f"Service {key} is defined twice" + (f" (first in {first})" if first else ""),
                                    source=describe(obj) if obj is not None else None)
            self.services[key] = value
            if origin:  # kept for that message only: a builder without origins carries none
                self.service_origin[key] = origin
        elif kind == "EndpointSlice":
            self.slices.append(value)
        elif kind == "Node":
            self.nodes[value.name] = value
        elif kind == "Pool":
            if value.name in self.pools:
                raise ManifestError(f"pool {value.name!r} is defined twice",
                                    source=describe(obj) if obj is not None else None)
            self.pools[value.name] = value
        elif kind == "VipGroup":
            name, vrid = value
            self.vrids[name] = vrid

    def merge(self, later: StateBuilder) -> None:
        """Add everything ``later`` holds (built from objects that come after this builder's), as adding
        its values one by one would, at the speed of dict updates: a Service or pool both hold is a
        :class:`ManifestError` (naming it, not where it is defined)."""
        # isdisjoint walks the smaller side: a piece's keys against the whole state's, not the reverse.
        if not self.services.keys().isdisjoint(later.services):
            raise ManifestError(f"Service {min(self.services.keys() & later.services.keys())} is defined twice")
        if not self.pools.keys().isdisjoint(later.pools):
            raise ManifestError(f"pool {min(self.pools.keys() & later.pools.keys())!r} is defined twice")
        self.nodes.update(later.nodes)
        self.services.update(later.services)
        self.service_origin.update(later.service_origin)
        self.slices.extend(later.slices)
        self.pools.update(later.pools)
        self.vrids.update(later.vrids)

    def state(self) -> DesiredState:
        return DesiredState(nodes=tuple(self.nodes.values()), services=tuple(self.services.values()),
                            endpoint_slices=tuple(self.slices), pools=tuple(self.pools.values()), vrids=self.vrids)


def state_from_objects(
    items: Iterable[tuple[str | None, Any]],
    *,
    classes: frozenset[str] = frozenset({LOAD_BALANCER_CLASS}),
    default_class: bool = True,
) -> DesiredState:
    """``(origin, object)`` pairs (Nodes, Services, EndpointSlices, VipPools or ``vip`` Eips, VipGroups) as
    a :class:`DesiredState`: the one place objects become a desired state (manifests, static sources;
    :func:`convert` and :class:`StateBuilder`, which a caller converting elsewhere uses directly).

    Other kinds are ignored. An invalid object, a pool or a Service defined twice, is a
    :class:`ManifestError` naming the object, the field and ``origin`` (a file and document, or None).
    """
    builder = StateBuilder()
    for origin, obj in items:
        try:
            converted = convert(obj, classes=classes, default_class=default_class)
            if converted is not None:
                builder.add(converted, origin, obj)
        except ManifestError as exc:
            if origin is None:
                raise
            raise ManifestError(str(exc), source=origin) from None
    return builder.state()

