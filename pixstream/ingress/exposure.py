"""What the ingress refuses or warns about before it listens, decided from its settings and
the address it binds: the local defaults are safe on loopback and nowhere else."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pixstream.settings import BUILT_IN_WEBHOOK_SECRET, Settings


def is_loopback(host: str) -> bool:
    """Whether binding `host` exposes nothing beyond this machine ("" and 0.0.0.0 do)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


@dataclass(frozen=True)
class Exposure:
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def assess(settings: Settings, host: str) -> Exposure:
    if is_loopback(host):
        return Exposure()
    refusals, warnings = [], []
    if settings.webhook_secret.get_secret_value() == BUILT_IN_WEBHOOK_SECRET:
        refusals.append(
            f"refusing to listen on {host} with the built-in webhook secret, which is published "
            "in PixStream's repository: set PIXSTREAM_WEBHOOK_SECRET (e.g. "
            '`python -c \'import base64,os; print("whsec_" + '
            "base64.b64encode(os.urandom(24)).decode())'`)"
        )
    if settings.anonymous == "on":
        warnings.append(
            f"listening on {host} with PIXSTREAM_ANONYMOUS=on: anyone who reaches this port can "
            "run any job; use 'presets' or 'off' and API keys (`pixstream keys create`)"
        )
    if settings.admin_port == 0:
        warnings.append(
            f"/metrics and /health are served on {host} with the API; set PIXSTREAM_ADMIN_PORT "
            "to serve them on a listener of their own"
        )
    return Exposure(refusals, warnings)
