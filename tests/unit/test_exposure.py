"""What the ingress refuses or warns about off loopback, decided from settings alone (no
traffic leaves loopback: the addresses are only compared)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from pixstream.ingress.exposure import assess, is_loopback
from pixstream.settings import Settings

OWN_SECRET = SecretStr("whsec_b3duLXNlY3JldC1mb3ItdGhpcy10ZXN0")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_binds_are_safe_with_the_defaults(host: str) -> None:
    assert is_loopback(host)
    assert assess(Settings(), host).refusals == []
    assert assess(Settings(), host).warnings == []


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "pixstream.example"])
def test_other_binds_refuse_the_built_in_secret(host: str) -> None:
    assert not is_loopback(host)
    (refusal,) = assess(Settings(), host).refusals
    assert "PIXSTREAM_WEBHOOK_SECRET" in refusal


def test_an_own_secret_starts_with_warnings_about_anonymous_and_the_admin_port() -> None:
    exposure = assess(Settings(webhook_secret=OWN_SECRET), "0.0.0.0")
    assert exposure.refusals == []
    assert any("PIXSTREAM_ANONYMOUS=on" in w for w in exposure.warnings)
    assert any("PIXSTREAM_ADMIN_PORT" in w for w in exposure.warnings)
    quiet = Settings(webhook_secret=OWN_SECRET, anonymous="presets", admin_port=9100)
    assert assess(quiet, "0.0.0.0") == assess(Settings(), "127.0.0.1")
