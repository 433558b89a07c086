"""oci:// references: the accepted form, and every malformed one refused with the form named."""

import pytest

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.oci.reference import OciReference, is_oci_reference, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci://127.0.0.1:5000/adult", OciReference("127.0.0.1:5000", "adult")),
        (
            "oci://registry.example.com/team/models/adult:v3",
            OciReference("registry.example.com", "team/models/adult", tag="v3"),
        ),
        (
            f"oci://localhost:5000/team/adult@{DIGEST}",
            OciReference("localhost:5000", "team/adult", digest=DIGEST),
        ),
        (
            f"oci://reg.example.com:443/a.b/c_d/e-f--g:1.0-rc_1@{DIGEST}",
            OciReference("reg.example.com:443", "a.b/c_d/e-f--g", tag="1.0-rc_1", digest=DIGEST),
        ),
        ("oci://[::1]:5000/m:latest", OciReference("[::1]:5000", "m", tag="latest")),
        ("oci://Registry.Example.COM/m", OciReference("registry.example.com", "m")),
    ],
)
def test_parses_the_documented_form(text: str, expected: OciReference) -> None:
    ref = parse_reference(text)
    assert ref == expected
    assert parse_reference(str(ref)) == ref
    assert is_oci_reference(text)


def test_canonical_text_and_pinning() -> None:
    ref = parse_reference("oci://127.0.0.1:5000/team/adult:v1")
    assert str(ref) == "oci://127.0.0.1:5000/team/adult:v1"
    pinned = ref.pinned(DIGEST)
    assert (pinned.tag, pinned.digest) == ("v1", DIGEST)
    assert str(pinned) == f"oci://127.0.0.1:5000/team/adult:v1@{DIGEST}"
    with pytest.raises(ConfigurationError, match="64 lower-case hex"):
        ref.pinned("sha256:ABC")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("https://127.0.0.1:5000/adult", "must start with 'oci://'"),
        ("127.0.0.1:5000/adult", "must start with 'oci://'"),
        ("oci://", "repository is missing"),
        ("oci://127.0.0.1:5000", "repository is missing"),
        ("oci://127.0.0.1:5000/", "repository is missing"),
        ("oci://127.0.0.1:5000/Adult", "lower-case"),
        ("oci://127.0.0.1:5000//adult", "repository component ''"),
        ("oci://127.0.0.1:5000/team/../adult", "repository component '..'"),
        ("oci://127.0.0.1:5000/adult-", "repository component"),
        ("oci://127.0.0.1:5000/adult:", "tag after ':' is empty"),
        ("oci://127.0.0.1:5000/adult:-x", "the tag must be"),
        ("oci://127.0.0.1:5000/adult:" + "x" * 129, "the tag must be"),
        ("oci://127.0.0.1:5000/adult@sha256:abc", "digest must be"),
        ("oci://127.0.0.1:5000/adult@md5:" + "a" * 32, "digest must be"),
        ("oci://127.0.0.1:5000/adult@" + DIGEST.upper(), "digest must be"),
        ("oci://127.0.0.1:99999/adult", "port"),
        ("oci://127.0.0.1:/adult", "port"),
        ("oci://ho_st/adult", "not a host name"),
        ("oci://::1/adult", "IPv6"),
        ("oci://127.0.0.1:5000/adult?x=1", "query or fragment"),
        ("oci://127.0.0.1:5000/adult#x", "query or fragment"),
        ("oci://127.0.0.1:5000/ad ult", "white space"),
        ("oci://127.0.0.1:5000/" + "a" * 256, "longer than 255"),
    ],
)
def test_refuses_malformed_references(text: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match="oci://HOST") as caught:
        parse_reference(text)
    assert problem in str(caught.value)


def test_user_info_is_refused_and_never_echoed() -> None:
    with pytest.raises(ConfigurationError, match="user info") as caught:
        parse_reference("oci://admin:hunter2@127.0.0.1:5000/adult")
    assert "hunter2" not in str(caught.value)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="lower-case"):
        OciReference("127.0.0.1:5000", "Team/Adult")
    with pytest.raises(ConfigurationError, match="digest must be"):
        OciReference("127.0.0.1:5000", "adult", digest="sha256:1234")
    with pytest.raises(ConfigurationError, match="not a host name"):
        OciReference("bad host", "adult")


def test_is_oci_reference() -> None:
    assert not is_oci_reference("s3://bucket/key")
    assert not is_oci_reference("models:/adult/3")
    assert not is_oci_reference(None)  # type: ignore[arg-type]
