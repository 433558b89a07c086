"""Keep credentials out of metadata, logs and the audit trail.

A source URI may carry a password (``https://user:secret@host/``) or a signed query
(``?X-Amz-Signature=...``), and such a URI may also sit inside an error message. Everything the
project records about a URI goes through `redact_uri`, and free text through `redact_text`.

Both parse the URI rather than pattern-match it, and both err on the side of hiding:

* user info is whatever precedes the *last* ``@`` of the authority, so an unencoded ``@`` in a
  password (``https://user:p@ss@host/``) does not leave part of it behind;
* an unencoded ``/``, ``?`` or ``#`` in user info ends the authority early and makes the URI
  ambiguous (``https://user:12/34@host/`` reads as host ``user``, port 12); any ``@`` after the
  authority therefore makes the URI unreadable, and an unreadable URI is replaced by a fixed
  placeholder naming only its scheme, never echoed. (The price: a legitimate ``@`` in a path is
  not shown either.)
* the query and the fragment are dropped whole. In free text the end of a query cannot be
  known (``?sig=abc def`` — is ``def`` still the signature?), so everything from the ``?`` or
  ``#`` to the end of the line goes. A URI in free text otherwise ends at whitespace, which user
  info cannot hold unencoded; an authority that does not parse hides the rest of its line too.
* a location without ``//`` has no user info, unless an ``@`` shows the ``//`` was forgotten
  (``user:pw@host/data``): then it becomes a placeholder naming nothing.

Free text is recognised only by ``scheme://``: a library error quoting a bare request target
(``'/data/a.csv?sig=...'``) is not recognisable as a URI. That is why messages are built from
what the project knows (the redacted URI, an exception's class name, a status code) and never
from a library exception's text.
"""

import re

# An RFC 3986 scheme; followed by "//" it starts a URI with an authority (and maybe user info).
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:", re.ASCII)
_AUTHORITY_FORM = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://", re.ASCII)
# host[:port] as RFC 3986 allows it: a bracketed IP literal or a reg-name, digits for the port.
_HOST_PORT = re.compile(
    r"(?:\[[0-9A-Za-z:.%~_-]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?", re.ASCII
)
_WHITESPACE = re.compile(r"\s")
# Every character str.splitlines() breaks on: "the end of the line" is the same for both.
_LINE_END = re.compile(r"[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
# Punctuation that ends a URI written inside prose or a repr ("('https://host:8443/a')").
_TRAILING = "'\"()[]{}<>,.;:!"
_MALFORMED = "<a malformed location, not shown>"


def _placeholder(scheme: str) -> str:
    # No "://" in it: redact_text leaves it alone, so redacting twice changes nothing.
    return f"<a malformed {scheme.lower()} URI, not shown>"


def _first(text: str, characters: str) -> int:
    """Index of the first of ``characters`` in ``text``, or ``len(text)``."""
    found = [i for i in (text.find(c) for c in characters) if i >= 0]
    return min(found, default=len(text))


def _split_authority_form(scheme: str, rest: str) -> tuple[str, str, bool] | None:
    """Parse what follows ``scheme://`` into ``(host[:port], path, had_query_or_fragment)``.

    Returns:
        None when the URI cannot be read without risk: an ``@`` after the authority (user info
        holding an unencoded ``/``, ``?`` or ``#``), or an authority that is no host and port
        once user info is removed.
    """
    end = _first(rest, "/?#")
    authority, tail = rest[:end], rest[end:]
    # A local file URI has no authority and no user info; a home directory may hold an '@'.
    if "@" in tail and not (scheme.lower() == "file" and authority == ""):
        return None
    host_port = authority.rpartition("@")[2]
    if not _HOST_PORT.fullmatch(host_port):
        return None
    cut = _first(tail, "?#")
    return host_port, tail[:cut], cut < len(tail)


def redact_uri(uri: str) -> str:
    """Return ``uri`` rebuilt as ``scheme://host[:port]/path``: no user info, query or fragment.

    Args:
        uri: Any URI.

    Returns:
        The URI without credentials; ``file`` paths are kept as they are. A URI that cannot be
        read without risk (see the module docstring) becomes a fixed placeholder that names at
        most its scheme.

    Examples:
        >>> redact_uri("https://u:p@ss@example.com/a.csv?X-Amz-Signature=abc def")
        'https://example.com/a.csv'
        >>> redact_uri("https://u:p/ss@example.com/a.csv")
        '<a malformed https URI, not shown>'
    """
    uri = uri.strip()
    scheme = _SCHEME.match(uri)
    if scheme is not None and uri.startswith("//", scheme.end()):
        name = scheme.group()[:-1]
        parts = _split_authority_form(name, uri[scheme.end() + 2 :])
        if parts is None:
            return _placeholder(name)
        host_port, path, _ = parts
        return f"{name}://{host_port}{path.rstrip()}"
    # No authority ("models:/adult@champion", "/data/adult/") means no user info, unless the
    # "//" was forgotten ("https:user:pw@host", "user:pw@host/data"): an '@' betrays that.
    kept = uri[: _first(uri, "?#")].rstrip()
    # What precedes the ':' then may be a user name, not a scheme: name nothing.
    return _MALFORMED if "@" in kept else kept


def redact_text(text: str) -> str:
    r"""Remove user info and query strings from every ``scheme://`` URI inside ``text``.

    A URI ends at whitespace; when it has a query or fragment, or cannot be read without risk,
    the rest of its line goes too (a query may hold whitespace).

    Examples:
        >>> redact_text("fetch failed: https://alice:pw@example.com/a.csv (timeout)")
        'fetch failed: https://example.com/a.csv (timeout)'
        >>> redact_text("got https://example.com/a.csv?sig=abc def (timeout)\nretrying")
        'got https://example.com/a.csv\nretrying'
    """
    out: list[str] = []
    position = 0
    while (found := _AUTHORITY_FORM.search(text, position)) is not None:
        out.append(text[position : found.start()])
        start = found.end()
        space = _WHITESPACE.search(text, start)
        token_end = space.start() if space else len(text)
        line = _LINE_END.search(text, start)
        line_end = line.start() if line else len(text)
        token = text[start:token_end]
        stripped = token.rstrip(_TRAILING)
        parts = _split_authority_form(found["scheme"], stripped)
        if parts is None:
            out.append(_placeholder(found["scheme"]))
            position = line_end
            continue
        host_port, path, had_query = parts
        out.append(f"{found['scheme']}://{host_port}{path}")
        if had_query:
            position = line_end
        else:
            out.append(token[len(stripped) :])
            position = token_end
    out.append(text[position:])
    return "".join(out)
