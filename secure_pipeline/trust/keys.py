"""Key files, fingerprints, and development keys that production can always recognise.

A key is named by its *fingerprint*: the SHA-256 of its public key's DER encoding
(SubjectPublicKeyInfo), which is also its key id in DSSE signatures and the trust policy, and
what ``openssl pkey -pubin -outform DER | sha256sum`` prints.

Development keys (the embedded default signs with them) live outside ``SECURE_PIPELINE_HOME``,
in ``SECURE_PIPELINE_DEV_KEYS`` (default ``~/.local/share/secure-pipeline/dev-keys``): whoever
can write the pipeline's state does not thereby hold its keys. Every development key's
fingerprint is appended to a ledger there when it is generated, and its PEM files carry a
label; production refuses a key whose fingerprint is in the ledger, whatever the file is called.
"""

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from secure_pipeline import environment as env
from secure_pipeline.errors import ConfigurationError

DEV_LABEL = b"secure-pipeline development key: never trusted in production\n"
LEDGER_FILE = "ledger"


def fingerprint(public_key_pem: bytes | str) -> str:
    """SHA-256 of a PEM public key's DER encoding (the key id used everywhere)."""
    from cryptography.hazmat.primitives import serialization

    data = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
    key = serialization.load_pem_public_key(data)
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def public_pem_of(private_key_pem: bytes, password: str | None = None) -> bytes:
    """The PEM public key of a PEM private key."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(
        private_key_pem, password.encode() if password else None
    )
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def dev_keys_dir() -> Path:
    """Where development keys live: ``SECURE_PIPELINE_DEV_KEYS``, else the user's data dir.

    Raises:
        ConfigurationError: When the directory is inside ``SECURE_PIPELINE_HOME``: the
            pipeline's state must not hold the keys that sign for it.
    """
    value = env.read("SECURE_PIPELINE_DEV_KEYS")
    if value:
        directory = Path(value).expanduser().resolve()
    else:
        data = os.environ.get("XDG_DATA_HOME", "").strip()
        base = Path(data) if data else Path.home() / ".local" / "share"
        directory = (base / "secure-pipeline" / "dev-keys").resolve()
    home = env.secure_pipeline_home()
    if directory == home or home in directory.parents:
        raise ConfigurationError(
            f"development keys must live outside SECURE_PIPELINE_HOME ({home}), found "
            f"{directory}: whoever can write the pipeline's state must not hold its keys. Set "
            "SECURE_PIPELINE_DEV_KEYS to a directory elsewhere."
        )
    return directory


@contextmanager
def dev_keys_lock() -> Iterator[Path]:
    """Hold an exclusive lock on the development key directory (first use races)."""
    directory = dev_keys_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (directory / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield directory
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ledger_paths() -> list[Path]:
    """Ledgers to consult: the configured dev key directory's and the default one."""
    paths = []
    with suppress(ConfigurationError):
        paths.append(dev_keys_dir() / LEDGER_FILE)
    default = Path.home() / ".local" / "share" / "secure-pipeline" / "dev-keys" / LEDGER_FILE
    if default not in paths:
        paths.append(default)
    return paths


def dev_fingerprints() -> frozenset[str]:
    """Fingerprints of every development key ever generated on this machine."""
    found: set[str] = set()
    for path in _ledger_paths():
        try:
            found.update(line.strip() for line in path.read_text().splitlines() if line.strip())
        except OSError:
            continue
    return frozenset(found)


def _record_dev(public_pem: bytes) -> None:
    directory = dev_keys_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(directory / LEDGER_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a") as ledger:
        ledger.write(fingerprint(public_pem) + "\n")


def is_dev_key(pem: bytes) -> bool:
    """Whether a PEM key (private or public) is labelled, or ledgered, as a development key."""
    if DEV_LABEL.strip() in pem:
        return True
    try:
        public = pem if b"PUBLIC KEY" in pem else public_pem_of(pem)
    except (ValueError, TypeError):
        return False
    return fingerprint(public) in dev_fingerprints()


def generate_key(private_path: Path, *, dev: bool = False, overwrite: bool = False) -> Path:
    """Generate an EC P-256 key pair: ``private_path`` (0600) and ``<stem>.pub`` beside it.

    Args:
        private_path: Where the private key goes.
        dev: A development key: labelled in both files and its fingerprint ledgered, so
            production refuses it under any name.
        overwrite: Replace existing files (never done implicitly).

    Returns:
        The public key's path.

    Raises:
        ConfigurationError: When a key exists already and ``overwrite`` is not set.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public_path = private_path.with_suffix(".pub")
    if private_path.exists() and not overwrite:
        raise ConfigurationError(f"{private_path} exists; refusing to replace a signing key")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    label = DEV_LABEL if dev else b""
    if dev:
        # Ledgered before the key exists: a crash in between leaves a refused fingerprint,
        # never a usable dev key that production would not recognise.
        _record_dev(public)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if overwrite else os.O_EXCL)
    descriptor = os.open(private_path, flags, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(label + pem)
    public_path.write_bytes(label + public)
    return public_path
