"""Keep credentials out of metadata, logs and the audit trail.

A source URI may carry a password (``https://user:secret@host/``) or a signed query
(``?X-Amz-Signature=...``), and such a URI may also sit inside an error message. Everything the
project records about a URI goes through `redact_uri`, and free text through `redact_text`.
Both err on the side of hiding: user info is dropped even when the URI is not well formed
(an unencoded ``#`` or ``/`` in a password).
"""

import re

# User info is what precedes an '@' in the authority: either no '/' before the '@', or a
# "user:password" whose password itself contains '/' (invalid, but seen in the wild).
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^\s/@]*@|[^\s/@]*:[^\s@]*@)")
_QUERY = re.compile(r"(?P<url>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#]*)[?#][^\s]*")


def redact_text(text: str) -> str:
    """Remove user info and query strings from every URI inside ``text``.

    Examples:
        >>> redact_text("fetch failed: https://alice:pw@example.com/a.csv?sig=1 (timeout)")
        'fetch failed: https://example.com/a.csv (timeout)'
    """
    text = _USERINFO.sub(lambda m: m.group("scheme"), text)
    return _QUERY.sub(lambda m: m.group("url"), text)


def redact_uri(uri: str) -> str:
    """Return ``uri`` without user info, query string or fragment.

    Args:
        uri: Any URI.

    Returns:
        The URI with credentials removed; ``file`` paths are kept as they are.

    Examples:
        >>> redact_uri("https://u:p@example.com/a.csv?X-Amz-Signature=abc")
        'https://example.com/a.csv'
    """
    return redact_text(uri.strip())
