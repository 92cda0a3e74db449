"""vipcore's keepalived backend: keepalived does VRRP, vipcore tells it what to do.

Layers, each importing only the ones before it:

* :mod:`vipcore_keepalived.settings` — the ``keepalived:`` config section, validated.
* :mod:`vipcore_keepalived.render` — pure: memberships + settings → keepalived.conf text.
* :mod:`vipcore_keepalived.process` — write atomically, start, reload (SIGHUP only on
  change), supervise and stop one keepalived; read its notify FIFO.
* :mod:`vipcore_keepalived.backend` — the vipcore dispatch hooks.
"""

BACKEND_NAME = "keepalived"
DISTRIBUTION = "vipcore-keepalived"
