"""Standard Webhooks signing: the spec's published vector, and what `verify` refuses."""

from __future__ import annotations

import base64

import pytest

from pixstream import signing
from pixstream.signing import InvalidSignature

# The test vector published with the Standard Webhooks specification.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

OTHER_SECRET = "whsec_" + base64.b64encode(b"another secret of 24 byte").decode()


def test_sign_matches_the_published_vector() -> None:
    assert signing.sign(SECRET, MSG_ID, TIMESTAMP, BODY) == EXPECTED


def test_the_whsec_prefix_is_optional() -> None:
    assert signing.sign(SECRET.removeprefix("whsec_"), MSG_ID, TIMESTAMP, BODY) == EXPECTED


def test_a_secret_that_is_not_base64_is_an_error() -> None:
    with pytest.raises(ValueError, match="base64"):
        signing.sign("whsec_not base64!", MSG_ID, TIMESTAMP, BODY)


def test_headers_carry_id_timestamp_and_signature() -> None:
    assert signing.headers([SECRET], MSG_ID, TIMESTAMP, BODY) == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": EXPECTED,
    }


def test_verify_accepts_the_vector() -> None:
    headers = signing.headers([SECRET], MSG_ID, TIMESTAMP, BODY)
    signing.verify(SECRET, headers, BODY, now=TIMESTAMP)


def test_verify_matches_header_names_case_insensitively() -> None:
    headers = {k.title(): v for k, v in signing.headers([SECRET], MSG_ID, TIMESTAMP, BODY).items()}
    signing.verify(SECRET, headers, BODY, now=TIMESTAMP)


def test_verify_accepts_any_matching_entry_and_skips_other_versions() -> None:
    headers = signing.headers([SECRET], MSG_ID, TIMESTAMP, BODY)
    stale = signing.sign(OTHER_SECRET, MSG_ID, TIMESTAMP, BODY)
    headers["webhook-signature"] = f"v1a,abcdef {stale} {EXPECTED}"
    signing.verify(SECRET, headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_refuses_missing_headers(missing: str) -> None:
    headers = signing.headers([SECRET], MSG_ID, TIMESTAMP, BODY)
    del headers[missing]
    with pytest.raises(InvalidSignature, match=f"missing {missing}"):
        signing.verify(SECRET, headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    ("now", "message"),
    [(TIMESTAMP + 301, "too old"), (TIMESTAMP - 301, "too new")],
)
def test_verify_refuses_timestamps_outside_the_tolerance(now: int, message: str) -> None:
    headers = signing.headers([SECRET], MSG_ID, TIMESTAMP, BODY)
    with pytest.raises(InvalidSignature, match=message):
        signing.verify(SECRET, headers, BODY, now=now)


def test_verify_accepts_timestamps_at_the_edge_of_the_tolerance() -> None:
    headers = signing.headers([SECRET], MSG_ID, TIMESTAMP, BODY)
    signing.verify(SECRET, headers, BODY, now=TIMESTAMP + 300)
    signing.verify(SECRET, headers, BODY, now=TIMESTAMP - 300)
    signing.verify(SECRET, headers, BODY, now=TIMESTAMP + 1000, tolerance_seconds=1000)


def test_verify_refuses_a_non_integer_timestamp() -> None:
    headers = signing.headers([SECRET], MSG_ID, TIMESTAMP, BODY)
    headers["webhook-timestamp"] = "yesterday"
    with pytest.raises(InvalidSignature, match="integer"):
        signing.verify(SECRET, headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    ("secret", "msg_id", "body"),
    [
        (OTHER_SECRET, MSG_ID, BODY),  # wrong secret
        (SECRET, "msg_other", BODY),  # id swapped by an attacker
        (SECRET, MSG_ID, b'{"test": 1}'),  # body tampered with
    ],
)
def test_verify_refuses_a_signature_that_does_not_match(
    secret: str, msg_id: str, body: bytes
) -> None:
    headers = signing.headers([SECRET], MSG_ID, TIMESTAMP, BODY)
    headers["webhook-id"] = msg_id
    with pytest.raises(InvalidSignature, match="no matching signature"):
        signing.verify(secret, headers, body, now=TIMESTAMP)


def test_verify_refuses_a_signature_of_another_version() -> None:
    headers = signing.headers([SECRET], MSG_ID, TIMESTAMP, BODY)
    headers["webhook-signature"] = EXPECTED.replace("v1,", "v2,")
    with pytest.raises(InvalidSignature):
        signing.verify(SECRET, headers, BODY, now=TIMESTAMP)


def test_verify_uses_the_clock_by_default() -> None:
    headers = signing.headers([SECRET], MSG_ID, TIMESTAMP, BODY)  # from 2021
    with pytest.raises(InvalidSignature, match="too old"):
        signing.verify(SECRET, headers, BODY)


def test_invalid_signature_is_a_value_error() -> None:
    assert issubclass(InvalidSignature, ValueError)
