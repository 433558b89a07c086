"""Keep credentials out of metadata, logs and the audit trail.

A source URI may carry a password (``https://user:secret@host/``) or a signed query
(``?X-Amz-Signature=...``). Everything the project records about a URI goes through
`redact_uri` first.
"""

from urllib.parse import urlsplit, urlunsplit


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
    parts = urlsplit(uri)
    if not parts.scheme:
        return uri
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
