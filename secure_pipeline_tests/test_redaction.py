"""Redaction parses URIs: no character of a password or a query survives, however written."""

import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from secure_pipeline.redaction import redact_text, redact_uri

# Secrets are lower case; everything else in the generated URIs and text is upper case, digits
# and fixed punctuation, so any lower-case letter left in an output is a piece of a secret.
SECRET_CHARS = string.ascii_lowercase + "@/?#:!$&'()*+,;=%~-._[]"
QUERY_CHARS = SECRET_CHARS + " \t"
PLACEHOLDER = "<a malformed https URI, not shown>"

hosts = st.from_regex(r"[A-Z0-9]{1,8}(\.[A-Z0-9]{1,8}){0,2}", fullmatch=True)
ports = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
paths = st.from_regex(r"(/[A-Z0-9._-]{0,8}){0,3}", fullmatch=True)
users = st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True)
# A leading letter: a password of punctuation alone would leave nothing to look for.
passwords = st.text(SECRET_CHARS, max_size=16).map(lambda s: "k" + s)
queries = st.text(QUERY_CHARS, max_size=24).map(lambda s: "sig=q" + s)
words = st.from_regex(r"[A-Z0-9 ():,]{0,12}", fullmatch=True)


def leftover_secret(output: str) -> str:
    """The lower-case characters an output still holds, besides the fixed words."""
    for fixed in (PLACEHOLDER, "https://"):
        output = output.replace(fixed, "")
    return "".join(c for c in output if c in string.ascii_lowercase)


@settings(max_examples=400, deadline=None)
@given(user=users, password=passwords, host=hosts, port=ports, path=paths, query=queries)
@example(user="user", password="p@ss", host="HOST", port="", path="/DATA/", query="sig=abc def")
@example(user="u", password="k12/34", host="HOST", port=":443", path="", query="sig=q")
@example(user="u", password="k#x", host="H", port="", path="/A", query="sig=q")
def test_redact_uri_keeps_host_and_path_only(user, password, host, port, path, query) -> None:
    uri = f"https://{user}:{password}@{host}{port}{path}?{query}"
    redacted = redact_uri(uri)
    assert leftover_secret(redacted) == ""
    # Either exactly what is safe to show, or the placeholder: never a mangled host.
    expected = f"https://{host}{port}{path}"
    if any(c in password for c in "/?#") or "@" in query:
        assert redacted == PLACEHOLDER  # ambiguous: the '@' may end the user info
    else:
        assert redacted == expected


@settings(max_examples=400, deadline=None)
@given(
    before=words,
    after=words,
    next_line=words,
    user=users,
    password=passwords,
    host=hosts,
    path=paths,
    query=st.one_of(st.none(), queries),
    quote=st.sampled_from(["", "'", '"', "("]),
)
@example(
    before="GOT ", after=" (TIMEOUT)", next_line="RETRYING", user="u", password="k",
    host="H", path="/A.CSV", query="sig=abc def", quote="",
)  # fmt: skip
def test_redact_text_leaves_no_character_of_a_secret(
    before, after, next_line, user, password, host, path, query, quote
) -> None:
    url = f"https://{user}:{password}@{host}{path}" + (f"?{query}" if query is not None else "")
    closing = {"'": "'", '"': '"', "(": ")"}.get(quote, "")
    text = f"{before} {quote}{url}{closing}{after}\n{next_line}"
    redacted = redact_text(text)
    assert leftover_secret(redacted) == ""
    # The next line is never touched, and text before the URI stays as it was.
    assert redacted.endswith(f"\n{next_line}")
    assert redacted.startswith(f"{before} {quote}")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://user:p@ss@data.example.com/adult/", "https://data.example.com/adult/"),
        ("https://data.example.com/a.csv?sig=abc def", "https://data.example.com/a.csv"),
        ("https://u:p@h.example:8443/a#frag", "https://h.example:8443/a"),
        ("https://[::1]:8443/a?x=1", "https://[::1]:8443/a"),
        ("s3://bucket/prefix/key?versionId=1", "s3://bucket/prefix/key"),
        ("file:///srv/data/adult.data", "file:///srv/data/adult.data"),
        ("file:///home/j@corp/data/", "file:///home/j@corp/data/"),  # no authority, no user
        ("  https://h/a  ", "https://h/a"),
        # an unencoded '/', '?' or '#' in a password: the URI cannot be read safely
        ("https://user:pa/ss@host/a", PLACEHOLDER),
        ("https://user:12?34@host/a", PLACEHOLDER),
        ("https://user:pa#ss@host/a", PLACEHOLDER),
        ("s3://AKIAEXAMPLE:wJal/rXUtn@bucket/key", "<a malformed s3 URI, not shown>"),
        ("https://ho st/a", PLACEHOLDER),
        # without "//": no user info, unless an '@' shows the "//" was forgotten
        ("user:password@host/data", "<a malformed location, not shown>"),
        ("https:user:password@host/data", "<a malformed location, not shown>"),
        ("/srv/data/?x=1", "/srv/data/"),
    ],
)
def test_redact_uri_examples(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "fetch failed: https://alice:s3cr3t@data.example.com/a.csv (timeout)",
            "fetch failed: https://data.example.com/a.csv (timeout)",
        ),
        (
            "refusing 'https://u:p@ss@host/data/': sources must be https",
            "refusing 'https://host/data/': sources must be https",
        ),
        ("got https://h/a.csv?sig=abc def (x)\nnext", "got https://h/a.csv\nnext"),
        ("x https://u:a b@host/p y\nz", "x <a malformed https URI, not shown>\nz"),
        ("see https://h/r?next=https://u:p@x/ b", "see <a malformed https URI, not shown>"),
        ("(see https://host:8443).", "(see https://host:8443)."),
        ("models:/adult@champion is served", "models:/adult@champion is served"),
    ],
)
def test_redact_text_examples(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@given(st.text(max_size=80))
def test_redacting_twice_changes_nothing(text: str) -> None:
    once = redact_text(text)
    assert redact_text(once) == once
    assert redact_uri(redact_uri(text)) == redact_uri(text)
