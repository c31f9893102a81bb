"""SigV4 against the worked example of AWS's S3 documentation ("Signature Calculations for
the Authorization Header", GET Object with a Range header)."""

from __future__ import annotations

from pixstream import sigv4

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_the_authorization_header_matches_the_aws_example() -> None:
    header = sigv4.authorization(
        method="GET",
        path="/test.txt",
        headers={
            "host": "examplebucket.s3.amazonaws.com",
            "range": "bytes=0-9",
            "x-amz-content-sha256": sigv4.EMPTY_SHA256,
            "x-amz-date": "20130524T000000Z",
        },
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        region="us-east-1",
    )
    assert header == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_object_paths_are_encoded_as_s3_canonicalises_them() -> None:
    assert sigv4.object_path("", "pixstream", "raw/a b/c~d+e.jpg") == (
        "/pixstream/raw/a%20b/c~d%2Be.jpg"
    )
    assert sigv4.object_path("/s3/", "pixstream") == "/s3/pixstream"
