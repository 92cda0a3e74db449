"""The errors a user of vipcore can meet.

Every error a person can cause (bad config, bad manifests, a missing
interface, an unknown backend) is a :class:`VipcoreError` with a message that
says what to do; the CLI prints that message, never a traceback.
"""

from __future__ import annotations


class VipcoreError(Exception):
    """Base class of every error vipcore raises on purpose."""

    exit_code = 1


class ConfigError(VipcoreError):
    """The configuration file or an environment override is invalid."""

    exit_code = 2

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None) -> None:
        self.source = source
        self.field = field
        where = ": ".join(part for part in (source, field) if part)
        super().__init__(f"{where}: {message}" if where else message)


class ManifestError(ConfigError):
    """A Kubernetes manifest (file or API object) fails validation."""


class PluginError(VipcoreError):
    """A plugin failed to load, is missing, or raised inside a hook.

    The message always names the plugin (and its distribution when known).
    """

    exit_code = 2

    def __init__(self, plugin: str, message: str, *, distribution: str | None = None) -> None:
        self.plugin = plugin
        self.distribution = distribution
        origin = f"{plugin!r}" + (f" (from {distribution})" if distribution else "")
        super().__init__(f"plugin {origin}: {message}")


class UnknownBackendError(PluginError):
    """The configured backend is not installed."""

    def __init__(self, name: str, installed: list[str], broken: list[str] | None = None) -> None:
        listing = ", ".join(sorted(installed)) or "none"
        if broken:
            listing += "; failed to load: " + ", ".join(sorted(broken))
        super().__init__(name, f"no such backend is installed (installed backends: {listing})")


#: The third-party modules each of ``pyproject.toml``'s extras brings (top-level names), by extra.
EXTRA_MODULES: dict[str, frozenset[str]] = {
    "kubernetes": frozenset({"kubernetes", "urllib3", "prometheus_client"}),
    "agent": frozenset({"pyroute2", "prometheus_client"}),
}


class MissingExtraError(VipcoreError):
    """A command or setting needs one of vipcore's optional extras, which is not installed."""

    exit_code = 2

    def __init__(self, what: str, extra: str, module: str) -> None:
        self.extra = extra
        self.module = module
        super().__init__(f"{what} needs the {extra!r} extra, which is not installed (no module {module!r}): "
                         f"pip install 'vipcore[{extra}]'")

    @classmethod
    def of(cls, what: str, exc: ImportError, extra: str | None = None) -> "MissingExtraError | None":
        """The error for ``exc`` when it is a missing extra's module; None when it is anything else (a
        module of vipcore's own or of a plugin: a bug to report as it is, not an install to advise).

        ``extra``: the one ``what`` comes with, advised when it brings the module (``prometheus_client``
        is in two)."""
        root = (exc.name or "").split(".")[0]
        for name in ([extra] if extra in EXTRA_MODULES else []) + list(EXTRA_MODULES):
            if root in EXTRA_MODULES[name]:
                return cls(what, name, root)
        return None


class InterfaceNotFoundError(VipcoreError):
    """A network interface named in a pool does not exist on this node."""

    exit_code = 2

    def __init__(self, interface: str, where: str = "this node") -> None:
        self.interface = interface
        super().__init__(f"interface {interface!r} does not exist on {where}")


class AllocationError(VipcoreError):
    """An address or a VRID could not be allocated for one Service or group."""


class LabError(VipcoreError):
    """The network-namespace lab could not be set up or driven."""

    exit_code = 2


class AddressError(VipcoreError):
    """An address could not be added to, removed from, or announced on an interface."""

    def __init__(self, interface: str, message: str) -> None:
        self.interface = interface
        super().__init__(f"interface {interface!r}: {message}")
