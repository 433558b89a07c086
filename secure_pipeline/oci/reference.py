"""``oci://`` references to artifacts in an OCI registry.

The form is ``oci://HOST[:PORT]/REPOSITORY[:TAG][@sha256:HEX]``. The repository follows the
distribution grammar (lower-case path components separated by ``/``); a tag and a digest may
both be given, and then the digest is what is fetched and the tag is only checked against it.
A reference is validated when it is built, so a malformed one never reaches a URL.
"""

import re
from dataclasses import dataclass, replace

from secure_pipeline.errors import ConfigurationError

PREFIX = "oci://"
FORM = "oci://HOST[:PORT]/REPOSITORY[:TAG][@sha256:<64 hex digits>]"

# Distribution's reference grammar (github.com/distribution/reference), restricted to what a
# registry host on a network can be: DNS names, IPv4 and bracketed IPv6 addresses.
_HOST_NAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*",
    re.ASCII,
)
_HOST_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\]", re.ASCII)
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*", re.ASCII)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)
_MAX_REPOSITORY = 255
_MAX_TEXT = 1024


def _problem(text: str, what: str) -> ConfigurationError:
    # A reference with user info ("oci://user:secret@host/...") may carry a password: never echo.
    head = text[len(PREFIX) :].split("/", 1)[0] if text.startswith(PREFIX) else ""
    shown = "<a reference with user info, not shown>" if "@" in head else repr(text[:200])
    return ConfigurationError(
        f"Expected an OCI reference of the form {FORM}, found {shown}: {what}. Credentials "
        "never go into a reference (use SECURE_PIPELINE_OCI_USERNAME/PASSWORD or the docker "
        "config)."
    )


def check_digest(digest: str, what: str = "digest") -> str:
    """Return ``digest`` if it is ``sha256:`` and 64 lower-case hex digits, else raise.

    Args:
        digest: The digest to check.
        what: What the digest is, for the message.

    Returns:
        The digest, unchanged.

    Raises:
        ConfigurationError: When the digest has another form or algorithm.
    """
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ConfigurationError(
            f"Expected the {what} as 'sha256:' followed by 64 lower-case hex digits, found "
            f"{str(digest)[:100]!r}. Copy the digest exactly as the registry reports it."
        )
    return digest


def _check_registry(registry: str) -> str | None:
    """Why ``registry`` is not ``host[:port]``, or None when it is."""
    if not isinstance(registry, str):
        return "the registry is not a string"
    host, port = registry, None
    if registry.startswith("["):
        end = registry.find("]")
        host, rest = registry[: end + 1], registry[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return "the registry host is not followed by ':PORT' or '/'"
            port = rest[1:]
        if not _HOST_IPV6.fullmatch(host):
            return "the bracketed registry address is not an IPv6 address"
    else:
        if registry.count(":") > 1:
            return "an IPv6 registry address must be written in brackets ([::1]:5000)"
        if ":" in registry:
            host, port = registry.split(":", 1)
        if not _HOST_NAME.fullmatch(host):
            return f"the registry host {host!r} is not a host name or IP address"
    if port is not None and not (port.isdigit() and port.isascii() and 0 < int(port) < 65536):
        return f"the registry port {port!r} is not a number from 1 to 65535"
    return None


def _check_repository(repository: str) -> str | None:
    """Why ``repository`` breaks the distribution grammar, or None when it does not."""
    if not repository:
        return "the repository is missing (a reference names HOST/REPOSITORY)"
    if len(repository) > _MAX_REPOSITORY:
        return f"the repository is longer than {_MAX_REPOSITORY} characters"
    for component in repository.split("/"):
        if not _PATH_COMPONENT.fullmatch(component):
            hint = " (repositories are lower-case)" if component.lower() != component else ""
            return (
                f"the repository component {component[:80]!r} is not lower-case letters, digits "
                f"and single separators (., _, __, -){hint}"
            )
    return None


@dataclass(frozen=True)
class OciReference:
    """An artifact in an OCI registry.

    Attributes:
        registry: ``host[:port]`` of the registry (host in lower case).
        repository: The repository path, such as ``team/models/adult``.
        tag: The tag, if any.
        digest: The manifest digest ``sha256:<64 hex>``, if pinned.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        # Built directly (not only by parse_reference) by callers: validate here once.
        text = str(self)
        if not isinstance(self.registry, str) or (problem := _check_registry(self.registry)):
            raise _problem(text, problem or "the registry is not a string")
        if self.registry.lower() != self.registry:
            object.__setattr__(self, "registry", self.registry.lower())
        if not isinstance(self.repository, str) or (problem := _check_repository(self.repository)):
            raise _problem(text, problem or "the repository is not a string")
        if self.tag is not None and (not isinstance(self.tag, str) or not _TAG.fullmatch(self.tag)):
            raise _problem(
                text,
                "the tag must be 1 to 128 letters, digits, '_', '.' or '-', not starting with "
                "'.' or '-'",
            )
        if self.digest is not None and (
            not isinstance(self.digest, str) or not _DIGEST.fullmatch(self.digest)
        ):
            raise _problem(text, "the digest must be 'sha256:' and 64 lower-case hex digits")

    def __str__(self) -> str:
        text = f"{PREFIX}{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def pinned(self, digest: str) -> "OciReference":
        """The same registry, repository and tag, pinned to ``digest``.

        Raises:
            ConfigurationError: When ``digest`` is not a sha256 digest.
        """
        return replace(self, digest=check_digest(digest))


def is_oci_reference(text: str) -> bool:
    """Whether ``text`` is meant as an OCI reference (starts with ``oci://``)."""
    return isinstance(text, str) and text.startswith(PREFIX)


def parse_reference(text: str) -> OciReference:
    """Parse ``oci://HOST[:PORT]/REPOSITORY[:TAG][@sha256:HEX]``.

    Args:
        text: The reference.

    Returns:
        The parsed reference.

    Raises:
        ConfigurationError: When ``text`` is not of that form; the message names the form.
    """
    if not isinstance(text, str) or not text.startswith(PREFIX):
        shown = text[:200] if isinstance(text, str) else text
        raise ConfigurationError(
            f"Expected an OCI reference of the form {FORM}, found {shown!r}: it must start with "
            f"{PREFIX!r}."
        )
    if len(text) > _MAX_TEXT:
        raise _problem(text, f"it is longer than {_MAX_TEXT} characters")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise _problem(text, "it contains white space or control characters")
    rest = text[len(PREFIX) :]
    if "/" not in rest:
        raise _problem(text, "the repository is missing (a reference names HOST/REPOSITORY)")
    registry, path = rest.split("/", 1)
    if "@" in registry:
        raise _problem(text, "it carries user info before the host")
    if any(c in path for c in "?#"):
        raise _problem(text, "a query or fragment is not part of an OCI reference")
    digest = None
    if "@" in path:
        path, digest = path.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise _problem(text, "the digest must be 'sha256:' and 64 lower-case hex digits")
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        tag = last.split(":", 1)[1]
        path = path[: len(path) - len(tag) - 1]
        if not tag:
            raise _problem(text, "the tag after ':' is empty")
    return OciReference(registry=registry, repository=path, tag=tag, digest=digest)
