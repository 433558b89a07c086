"""Envelope-encrypted snapshots: no plaintext at rest, verified reads, wrong keys, shredding.

Both backends with real keyrings: a filesystem store with the local keyring, and an S3 bucket
on the moto server with KMS keys on the same server.
"""

import base64
import hashlib
import json
import os
import uuid
from pathlib import Path

import boto3
import pytest

from secure_pipeline import environment as env
from secure_pipeline.errors import (
    ConfigurationError,
    ErasedError,
    IntegrityError,
    KeyUnavailableError,
)
from secure_pipeline.storage import encryption as enc
from secure_pipeline.storage.keyrings import (
    Keyring,
    KmsKeyring,
    LocalKeyring,
    keyring_from_environment,
)
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.storage.resources import (
    LocalSnapshotStoreResource,
    S3SnapshotStoreResource,
    build_resources,
)
from secure_pipeline.storage.s3 import S3SnapshotStore
from secure_pipeline.storage.snapshots import (
    SizeLimitError,
    SnapshotRef,
    SnapshotStore,
    snapshot_key,
)
from secure_pipeline_tests.conftest import overwrite_raw

NAMES = ("Alice Example", "Bruno Sample", "Chiara Placeholder", "Dmitri Testcase")
TABLE = ("id,name,city\n" + "".join(
    f"{i},{NAMES[i % len(NAMES)]},Town {i % 7}\n" for i in range(2000)
)).encode()  # fmt: skip
DIGEST = hashlib.sha256(TABLE).hexdigest()
MIB = 1024 * 1024


@pytest.fixture
def local_keyring(tmp_path: Path) -> LocalKeyring:
    return LocalKeyring(tmp_path / "keys-a" / "data-keys")


@pytest.fixture
def kms_keyring(moto_endpoint: str, aws_credentials: None) -> KmsKeyring:
    return KmsKeyring(endpoint_url=moto_endpoint, region="us-east-1", allow_loopback_http=True)


@pytest.fixture
def kms_client(moto_endpoint: str, aws_credentials: None):
    return boto3.client("kms", endpoint_url=moto_endpoint, region_name="us-east-1")


def _s3_store(bucket: str, endpoint: str, keyring: Keyring | None) -> S3SnapshotStore:
    return S3SnapshotStore(
        bucket,
        endpoint_url=endpoint,
        region="us-east-1",
        allow_loopback_http=True,
        multipart_threshold=6 * MIB,
        part_size=5 * MIB,
        keyring=keyring,
    )


@pytest.fixture(params=["local", "s3-kms"])
def estore(request: pytest.FixtureRequest, tmp_path: Path) -> SnapshotStore:
    """An encrypting store: local with the local keyring, or S3 with KMS keys."""
    if request.param == "local":
        return LocalSnapshotStore(
            tmp_path / "store", keyring=request.getfixturevalue("local_keyring")
        )
    return _s3_store(
        request.getfixturevalue("s3_bucket"),
        request.getfixturevalue("moto_endpoint"),
        request.getfixturevalue("kms_keyring"),
    )


def _twin(store: SnapshotStore, keyring: Keyring | None) -> SnapshotStore:
    """The same storage seen through another keyring (or none)."""
    if isinstance(store, LocalSnapshotStore):
        return LocalSnapshotStore(store.root, keyring=keyring)
    assert isinstance(store, S3SnapshotStore)
    return _s3_store(store.bucket, store.endpoint_url or "", keyring)


def raw_object(store: SnapshotStore, key: str) -> bytes:
    """The stored bytes exactly as they are at rest, read past the store."""
    if isinstance(store, LocalSnapshotStore):
        return (store.root / key).read_bytes()
    assert isinstance(store, S3SnapshotStore)
    raw = boto3.client("s3", endpoint_url=store.endpoint_url, region_name="us-east-1")
    return raw.get_object(Bucket=store.bucket, Key=key)["Body"].read()


def everything_stored(store: SnapshotStore) -> bytes:
    """Every object's bytes and every metadata value in the store, concatenated."""
    if isinstance(store, LocalSnapshotStore):
        return b"".join(p.read_bytes() for p in sorted(store.root.rglob("*")) if p.is_file())
    assert isinstance(store, S3SnapshotStore)
    raw = boto3.client("s3", endpoint_url=store.endpoint_url, region_name="us-east-1")
    out = []
    for item in raw.list_objects_v2(Bucket=store.bucket).get("Contents", []):
        got = raw.get_object(Bucket=store.bucket, Key=item["Key"])
        out.append(got["Body"].read())
        out.extend(v.encode() for v in got.get("Metadata", {}).values())
    return b"".join(out)


def _dek(store: SnapshotStore, key: str) -> bytes:
    info = store.encryption_info(key)
    assert info is not None
    assert store.keyring is not None
    return store.keyring.unwrap(info.key_id, info.wrapped_key, info.context)


def _key_files(keyring: LocalKeyring, suffix: str = ".key") -> list[Path]:
    return sorted(keyring.directory.glob(f"*{suffix}")) if keyring.directory.exists() else []


# -- the object format ---------------------------------------------------------------------


def _sealed(data: bytes, chunk_size: int = 16) -> tuple[bytes, bytes, enc.EncryptionInfo]:
    dek = os.urandom(32)
    info = enc.new_encryption_info(
        provider="local", key_id="k", wrapped_key=b"w", context={"a": "b"}, chunk_size=chunk_size
    )
    return bytes(enc.encrypt_bytes(data, dek, info)), dek, info


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 48, 100])
def test_format_round_trips_in_any_chunking(size: int) -> None:
    data = os.urandom(size)
    obj, dek, info = _sealed(data)
    streamed = b"".join(enc.encrypt_chunks((data[i : i + 5] for i in range(0, size, 5)), dek, info))
    assert streamed == obj
    header = enc.parse_header(obj)
    body = obj[len(header.header) :]
    assert bytes(enc.decrypt_bytes(body, dek, header)) == data
    for step in (1, 7, 32, 33, 1000):
        pieces = [body[i : i + step] for i in range(0, len(body), step)]
        assert b"".join(enc.decrypt_chunks(pieces, dek, header)) == data


def test_format_refuses_reordered_truncated_and_altered_objects() -> None:
    data = os.urandom(64)  # 4 full chunks and an empty final one
    obj, dek, _ = _sealed(data)
    header = enc.parse_header(obj)
    body = obj[len(header.header) :]
    unit = 16 + enc.TAG_SIZE
    swapped = body[unit : 2 * unit] + body[:unit] + body[2 * unit :]
    for bad in (swapped, body[:-16], body[: 4 * unit], body[: 3 * unit]):
        with pytest.raises(IntegrityError, match="failed decryption"):
            enc.decrypt_bytes(bad, dek, header)
        with pytest.raises(IntegrityError, match="failed decryption"):
            list(enc.decrypt_chunks([bad], dek, header))
    # A header edited to another chunk size changes every chunk's associated data.
    edited = obj.replace(b'"chunk_size":16', b'"chunk_size":32')
    other = enc.parse_header(edited)
    with pytest.raises(IntegrityError, match="failed decryption"):
        enc.decrypt_bytes(edited[len(other.header) :], dek, other)


# -- 1. ciphertext at rest, plaintext address, no key in the store ---------------------------


def test_encrypted_snapshots_hold_no_plaintext_and_no_key(estore: SnapshotStore) -> None:
    ref = estore.put_bytes("people", TABLE, ext="csv", format="csv", encrypt=True)
    streamed = estore.put_stream(
        "people_stream",
        (TABLE[i : i + 1000] for i in range(0, len(TABLE), 1000)),
        ext="csv",
        format="csv",
        encrypt=True,
    )
    for snapshot, asset in ((ref, "people"), (streamed, "people_stream")):
        assert snapshot.key == snapshot_key(asset, DIGEST, "csv")  # the plaintext's address
        assert (snapshot.sha256, snapshot.size, snapshot.created) == (DIGEST, len(TABLE), True)
        stored = raw_object(estore, snapshot.key)
        assert stored.startswith(enc.MAGIC)
        for name in NAMES:
            assert name.encode() not in stored
        assert estore.read_bytes(snapshot) == TABLE
        manifest = estore.read_manifest(snapshot)
        info = estore.encryption_info(snapshot)
        assert info is not None
        assert manifest.encryption == {
            "scheme": enc.SCHEME, "provider": estore.keyring.provider, "key_id": info.key_id,
        }  # fmt: skip
        assert manifest.sha256 == DIGEST
    plaintext = estore.put_bytes("public", TABLE, ext="csv", format="csv")
    assert estore.read_manifest(plaintext).encryption is None
    assert b'"encryption"' not in estore.read_manifest(plaintext).to_json()
    everything = everything_stored(estore)
    for snapshot in (ref, streamed):
        dek = _dek(estore, snapshot.key)
        for form in (dek, base64.b64encode(dek), dek.hex().encode()):
            assert form not in everything
    # Each snapshot has a key of its own, so each can be shredded alone.
    assert estore.encryption_info(ref).key_id != estore.encryption_info(streamed).key_id


def test_empty_and_multi_chunk_payloads_round_trip(estore: SnapshotStore, tmp_path: Path) -> None:
    empty = estore.put_bytes("e", b"", ext="bin", format="bytes", encrypt=True)
    assert estore.read_bytes(empty) == b""
    data = os.urandom(4 * MIB + 1234)  # two chunks
    ref = estore.put_stream(
        "m", (data[i : i + 300_000] for i in range(0, len(data), 300_000)), ext="bin",
        format="bytes", encrypt=True,
    )  # fmt: skip
    assert estore.read_bytes(ref) == data
    assert estore.download_to(ref, tmp_path / "out.bin").read_bytes() == data


# -- 2. verified reads -----------------------------------------------------------------------


def test_flipped_ciphertext_byte_is_refused(estore: SnapshotStore, tmp_path: Path) -> None:
    ref = estore.put_bytes("people", TABLE, ext="csv", format="csv", encrypt=True)
    stored = bytearray(raw_object(estore, ref.key))
    header = enc.parse_header(stored)
    stored[len(header.header) + 100] ^= 0x01
    overwrite_raw(estore, ref.key, bytes(stored))
    with pytest.raises(IntegrityError, match="failed decryption at chunk 0") as err:
        estore.read_bytes(ref)
    assert ref.key in str(err.value)
    target = tmp_path / "out.csv"
    with pytest.raises(IntegrityError, match="failed decryption"):
        estore.download_to(ref, target)
    assert not target.exists()


@pytest.mark.parametrize("size", [4 * MIB + 5000, 4 * MIB])
def test_truncated_object_is_refused(estore: SnapshotStore, size: int) -> None:
    """Dropping the last chunk leaves only authentic chunks: the final flag catches it."""
    data = os.urandom(size)
    ref = estore.put_bytes("big", data, ext="bin", format="bytes", encrypt=True)
    stored = raw_object(estore, ref.key)
    header = enc.parse_header(stored)
    overwrite_raw(estore, ref.key, stored[: len(header.header) + header.chunk_size + 16])
    with pytest.raises(IntegrityError, match="final chunk is missing"):
        estore.read_bytes(ref)


def test_header_of_another_snapshot_is_refused(estore: SnapshotStore) -> None:
    a = estore.put_bytes("t", TABLE, ext="csv", format="csv", encrypt=True)
    b = estore.put_bytes("t", TABLE + b"9,Eve,Town\n", ext="csv", format="csv", encrypt=True)
    stored_a, stored_b = raw_object(estore, a.key), raw_object(estore, b.key)
    header_a, header_b = enc.parse_header(stored_a), enc.parse_header(stored_b)
    # B's whole header (its key id and wrapped key) in front of A's chunks.
    overwrite_raw(estore, a.key, header_b.header + stored_a[len(header_a.header) :])
    with pytest.raises(IntegrityError, match="failed decryption") as err:
        estore.read_bytes(a)
    assert not isinstance(err.value, KeyUnavailableError | ErasedError)
    # Only the wrapped key swapped into A's header: it does not unwrap under A's key.
    document = json.loads(stored_a[enc.PREFIX_SIZE : len(header_a.header)])
    document["wrapped_key"] = base64.b64encode(header_b.wrapped_key).decode()
    body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    forged = enc.MAGIC + len(body).to_bytes(4, "big") + body + stored_a[len(header_a.header) :]
    overwrite_raw(estore, a.key, forged)
    with pytest.raises(IntegrityError) as err:
        estore.read_bytes(a)
    assert not isinstance(err.value, ErasedError)
    if isinstance(estore.keyring, LocalKeyring):
        assert "wrapped data key does not authenticate" in str(err.value)
    # KMS answers IncorrectKeyException (reported as tampering); the moto server answers
    # AccessDeniedException instead, which the keyring must report as a key it cannot use.


def test_digest_is_checked_after_decryption(estore: SnapshotStore) -> None:
    a = estore.put_bytes("t", TABLE, ext="csv", format="csv", encrypt=True)
    other = TABLE.replace(b"Alice", b"Alina")
    b = estore.put_bytes("t", other, ext="csv", format="csv", encrypt=True)
    overwrite_raw(estore, a.key, raw_object(estore, b.key))  # a valid object, other content
    with pytest.raises(IntegrityError, match=f"expected sha256 {DIGEST}"):
        estore.read_bytes(a)
    c = estore.put_bytes("elsewhere", TABLE, ext="csv", format="csv", encrypt=True)
    overwrite_raw(estore, b.key, raw_object(estore, c.key))
    with pytest.raises(IntegrityError, match="copied from another asset"):
        estore.read_bytes(b)


# -- 3. the wrong keyring --------------------------------------------------------------------


def test_wrong_or_missing_keyring_changes_nothing(estore: SnapshotStore, tmp_path: Path) -> None:
    ref = estore.put_bytes("people", TABLE, ext="csv", format="csv", encrypt=True)
    info = estore.encryption_info(ref)
    before = raw_object(estore, ref.key)
    keys_before = list(estore.list_keys("snapshots/"))
    others: list[SnapshotStore] = [
        _twin(estore, LocalKeyring(tmp_path / "elsewhere")),
        _twin(estore, None),
    ]
    if isinstance(estore, S3SnapshotStore):
        others.append(_twin(estore, KmsKeyring(
            endpoint_url=estore.endpoint_url, region="eu-west-1", allow_loopback_http=True
        )))  # fmt: skip
    for other in others:
        with pytest.raises(KeyUnavailableError) as err:
            other.read_bytes(ref)
        message = str(err.value)
        assert info.provider in message
        assert info.key_id in message
        assert "nothing was changed" in message
        assert (err.value.provider, err.value.key_id) == (info.provider, info.key_id)
        with pytest.raises(KeyUnavailableError):
            other.download_to(ref, tmp_path / "out.csv")
        assert not (tmp_path / "out.csv").exists()
        # A rewrite through the wrong keyring is refused too, before anything is written.
        with pytest.raises(KeyUnavailableError):
            other.put_bytes(
                "people", TABLE, ext="csv", format="csv", encrypt=other.keyring is not None
            )
    with pytest.raises(ConfigurationError, match="no keyring"):
        _twin(estore, None).put_bytes("new", b"x", ext="bin", format="bytes", encrypt=True)
    assert raw_object(estore, ref.key) == before
    assert list(estore.list_keys("snapshots/")) == keys_before
    assert estore.read_bytes(ref) == TABLE  # the right keyring still reads it


# -- 4. shredding ----------------------------------------------------------------------------


def test_shred_erases_one_snapshot_and_new_generations_follow(
    estore: SnapshotStore, tmp_path: Path
) -> None:
    ref = estore.put_bytes("people", TABLE, ext="csv", format="csv", encrypt=True)
    neighbour = estore.put_bytes("people", TABLE + b"x\n", ext="csv", format="csv", encrypt=True)
    public = estore.put_bytes("people", b"id\n1\n", ext="csv", format="csv")
    fileset = estore.put_fileset("batch", {"people.csv": ref, "ids.csv": public})
    info = estore.encryption_info(ref)
    result = estore.shred(ref, reason="erasure request 1")
    assert (result.provider, result.key_id, result.already_shredded) == (
        info.provider, info.key_id, False,
    )  # fmt: skip
    assert result.reason == "erasure request 1"
    assert result.shredded_at
    for read in (
        lambda: estore.read_bytes(ref),
        lambda: estore.download_to(ref, tmp_path / "out.csv"),
        lambda: estore.read_fileset(fileset),
    ):
        with pytest.raises(ErasedError, match="was erased") as err:
            read()
        assert "erasure request 1" in str(err.value)
        assert result.shredded_at in str(err.value)
    assert not (tmp_path / "out.csv").exists()
    assert estore.shredded(ref)
    assert not estore.shredded(neighbour)
    assert not estore.shredded(public)
    assert estore.read_bytes(neighbour) == TABLE + b"x\n"  # the others are untouched
    again = estore.shred(ref, reason="a second request")
    assert again.already_shredded
    assert again.reason == "erasure request 1"
    if isinstance(estore.keyring, LocalKeyring):
        assert not (estore.keyring.directory / f"{info.key_id}.key").exists()
        assert (estore.keyring.directory / f"{info.key_id}.shredded").exists()
    else:
        raw = boto3.client("kms", endpoint_url=estore.endpoint_url, region_name="us-east-1")
        assert raw.describe_key(KeyId=info.key_id)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    # The same plaintext again: stored under the next generation, readable, then a no-op.
    second = estore.put_bytes("people", TABLE, ext="csv", format="csv", encrypt=True)
    assert second.key == f"snapshots/people/{DIGEST}.g2.csv"
    assert second.created
    assert estore.read_bytes(second) == TABLE
    assert estore.read_manifest(second).encryption["key_id"] != info.key_id
    third = estore.put_stream("people", iter([TABLE]), ext="csv", format="csv", encrypt=True)
    assert (third.key, third.created) == (second.key, False)
    with pytest.raises(IntegrityError, match="plaintext"):
        estore.shred(public, reason="x")


def test_shred_record_outlives_the_keyrings_memory(
    local_keyring: LocalKeyring, tmp_path: Path
) -> None:
    """Once KMS has deleted a key it answers NotFound; the store's record still says erased."""
    store = LocalSnapshotStore(tmp_path / "store", keyring=local_keyring)
    ref = store.put_bytes("people", TABLE, ext="csv", format="csv", encrypt=True)
    info = store.encryption_info(ref)
    store.shred(ref, reason="retention")
    (local_keyring.directory / f"{info.key_id}.shredded").unlink()  # the keyring forgot
    with pytest.raises(ErasedError, match="retention"):
        store.read_bytes(ref)
    assert store.shredded(ref)
    assert store.shred(ref, reason="again").already_shredded
    assert store.put_bytes("people", TABLE, ext="csv", format="csv", encrypt=True).key.endswith(
        ".g2.csv"
    )


def test_kms_keys_are_per_snapshot_tagged_and_scheduled_for_deletion(
    s3_bucket: str, moto_endpoint: str, kms_keyring: KmsKeyring, kms_client
) -> None:
    store = _s3_store(s3_bucket, moto_endpoint, kms_keyring)
    ref = store.put_bytes(["adult", "raw"], TABLE, ext="csv", format="csv", encrypt=True)
    info = store.encryption_info(ref)
    tags = {t["TagKey"]: t["TagValue"]
            for t in kms_client.list_resource_tags(KeyId=info.key_id)["Tags"]}  # fmt: skip
    assert tags == {"secure-pipeline:purpose": "snapshot-data-key",
                    "secure-pipeline:asset": "adult/raw"}  # fmt: skip
    assert info.context == {"secure-pipeline:asset": "adult/raw"}
    result = store.shred(ref, reason="erasure")
    assert result.deletion_date
    assert (
        kms_client.describe_key(KeyId=info.key_id)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    )
    # moto would still decrypt with a key pending deletion; the keyring checks the state first
    # (on its own, without the store's shred record).
    with pytest.raises(ErasedError, match="pending deletion"):
        kms_keyring.unwrap(info.key_id, info.wrapped_key, info.context)
    with pytest.raises(ErasedError):
        store.read_bytes(ref)
    with pytest.raises(ConfigurationError, match="7...30"):
        KmsKeyring(endpoint_url=moto_endpoint, allow_loopback_http=True, deletion_window_days=3)


# -- 5. identical and different rewrites -----------------------------------------------------


def _key_count(store: SnapshotStore, kms_client) -> int:
    if isinstance(store.keyring, LocalKeyring):
        return len(_key_files(store.keyring))
    return sum(
        1 for k in kms_client.list_keys()["Keys"]
        if kms_client.describe_key(KeyId=k["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"
    )  # fmt: skip


def test_identical_rewrite_is_a_no_op_and_makes_no_key(estore: SnapshotStore, request) -> None:
    kms = request.getfixturevalue("kms_client") if isinstance(estore, S3SnapshotStore) else None
    first = estore.put_bytes("people", TABLE, ext="csv", format="csv", encrypt=True, run_id="r1")
    keys = _key_count(estore, kms)
    second = estore.put_bytes("people", TABLE, ext="csv", format="csv", encrypt=True, run_id="r2")
    streamed = estore.put_stream("people", iter([TABLE]), ext="csv", format="csv", encrypt=True)
    assert (second.key, second.created, streamed.key, streamed.created) == (
        first.key, False, first.key, False,
    )  # fmt: skip
    assert _key_count(estore, kms) == keys  # the stream's key was discarded again
    assert estore.read_manifest(second).run_id == "r1"
    # Different bytes under the taken key are still refused, and stay as they are.
    other = estore.put_bytes("people", TABLE + b"z\n", ext="csv", format="csv", encrypt=True)
    impostor = raw_object(estore, other.key)
    overwrite_raw(estore, first.key, impostor)
    with pytest.raises(IntegrityError, match="already holds different bytes"):
        estore.put_bytes("people", TABLE, ext="csv", format="csv", encrypt=True)
    flipped = bytearray(impostor)
    flipped[-1] ^= 1
    overwrite_raw(estore, first.key, bytes(flipped))
    with pytest.raises(IntegrityError, match="fail decryption"):
        estore.put_bytes("people", TABLE, ext="csv", format="csv", encrypt=True)
    assert raw_object(estore, first.key) == bytes(flipped)


def test_failed_encrypted_stream_stores_nothing_and_keeps_no_key(
    local_keyring: LocalKeyring, tmp_path: Path
) -> None:
    store = LocalSnapshotStore(tmp_path / "store", keyring=local_keyring)
    with pytest.raises(SizeLimitError):
        store.put_stream("big", iter([b"x" * 1000] * 5), ext="bin", format="bytes",
                         max_bytes=4000, encrypt=True)  # fmt: skip
    assert list(store.list_keys("snapshots/")) == []
    assert _key_files(local_keyring) == []


# -- 6. plaintext that looks encrypted -------------------------------------------------------


def test_plaintext_starting_with_the_marker_is_refused(estore: SnapshotStore) -> None:
    looks_encrypted = enc.MAGIC + b"\x00\x00\x00\x10not really"
    with pytest.raises(IntegrityError, match="marker of an encrypted snapshot"):
        estore.put_bytes("t", looks_encrypted, ext="bin", format="bytes")
    with pytest.raises(IntegrityError, match="marker of an encrypted snapshot"):
        estore.put_stream("t", iter([b"SPA", b"EAD1", b"\nrest"]), ext="bin", format="bytes")
    with pytest.raises(IntegrityError, match="marker of an encrypted snapshot"):
        estore.create_object("records/1.json", looks_encrypted)
    assert list(estore.list_keys("snapshots/")) == []
    assert not estore.exists("records/1.json")
    # Encrypted, the same bytes are fine: the stored object has its own header.
    ref = estore.put_bytes("t", looks_encrypted, ext="bin", format="bytes", encrypt=True)
    assert estore.read_bytes(ref) == looks_encrypted
    assert estore.put_bytes("t", b"SPAEAD", ext="bin", format="bytes").created


# -- 7. S3 multipart -------------------------------------------------------------------------


def test_s3_large_encrypted_objects_go_up_in_parts(
    s3_bucket: str, moto_endpoint: str, kms_keyring: KmsKeyring, s3_client, tmp_path: Path
) -> None:
    store = _s3_store(s3_bucket, moto_endpoint, kms_keyring)
    marker = b"Alice Example;" * 1000
    data = marker + os.urandom(11 * MIB)
    streamed_data = os.urandom(11 * MIB) + marker
    ref = store.put_bytes("big", data, ext="bin", format="bytes", encrypt=True)
    streamed = store.put_stream(
        "big", (streamed_data[i : i + MIB] for i in range(0, len(streamed_data), MIB)),
        ext="bin", format="bytes", encrypt=True,
    )  # fmt: skip
    for snapshot, payload in ((ref, data), (streamed, streamed_data)):
        head = s3_client.head_object(Bucket=s3_bucket, Key=snapshot.key)
        assert head["ETag"].strip('"').endswith("-3")  # three parts
        assert marker[:200] not in raw_object(store, snapshot.key)
        assert store.read_bytes(snapshot) == payload
        assert store.download_to(snapshot, tmp_path / "out.bin").read_bytes() == payload


# -- 8. configuration ------------------------------------------------------------------------


def test_keyring_from_environment(
    monkeypatch: pytest.MonkeyPatch, dev_keys: Path, moto_endpoint: str
) -> None:
    local = keyring_from_environment(env.Environment.LOCAL)
    assert isinstance(local, LocalKeyring)
    assert local.directory == (dev_keys / "data-keys").resolve()
    production = keyring_from_environment(env.Environment.PRODUCTION)
    assert isinstance(production, KmsKeyring)
    monkeypatch.setenv("SECURE_PIPELINE_DATA_KEYRING", "local")
    with pytest.raises(ConfigurationError, match="refused in production"):
        keyring_from_environment(env.Environment.PRODUCTION)
    monkeypatch.setenv("SECURE_PIPELINE_DATA_KEYRING", "vault")
    with pytest.raises(ConfigurationError, match="must be one of"):
        keyring_from_environment(env.Environment.LOCAL)
    monkeypatch.setenv("SECURE_PIPELINE_DATA_KEYRING", "KMS")
    monkeypatch.setenv("SECURE_PIPELINE_KMS_ENDPOINT", moto_endpoint)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    kms = keyring_from_environment(env.Environment.LOCAL, deletion_window_days=30)
    assert isinstance(kms, KmsKeyring)
    assert (kms.endpoint_url, kms.region, kms.deletion_window_days) == (
        moto_endpoint, "eu-west-1", 30,
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="must use https"):
        keyring_from_environment(env.Environment.PRODUCTION)  # loopback http: local only
    monkeypatch.setenv("SECURE_PIPELINE_KMS_ENDPOINT", "http://10.0.0.5:4566")
    with pytest.raises(ConfigurationError, match="must use https"):
        keyring_from_environment(env.Environment.LOCAL)
    monkeypatch.delenv("SECURE_PIPELINE_KMS_ENDPOINT")
    with pytest.raises(ConfigurationError, match="7...30"):
        keyring_from_environment(env.Environment.PRODUCTION, deletion_window_days=31)


def test_store_resources_build_their_keyring(
    monkeypatch: pytest.MonkeyPatch, dev_keys: Path, tmp_path: Path, moto_endpoint: str
) -> None:
    store = LocalSnapshotStoreResource(root=str(tmp_path / "s")).get_store()
    assert isinstance(store.keyring, LocalKeyring)
    assert store.keyring.directory == (dev_keys / "data-keys").resolve()
    custom = LocalSnapshotStoreResource(root=str(tmp_path / "s"), data_keys_dir=str(tmp_path / "k"))
    assert custom.get_store().keyring.directory == (tmp_path / "k").resolve()
    kms = S3SnapshotStoreResource(
        bucket="b", endpoint_url=moto_endpoint, region="us-east-1", allow_loopback_http=True,
        data_keyring="kms", kms_endpoint_url=moto_endpoint,
    ).get_store()  # fmt: skip
    assert isinstance(kms.keyring, KmsKeyring)
    assert kms.keyring.region == "us-east-1"
    assert build_resources(env.Environment.LOCAL) is build_resources(env.Environment.LOCAL)
    monkeypatch.setenv("SECURE_PIPELINE_ENV", "production")
    with pytest.raises(ConfigurationError, match="refused in production"):
        S3SnapshotStoreResource(
            bucket=f"b-{uuid.uuid4().hex[:6]}", endpoint_url=moto_endpoint, region="us-east-1",
            allow_loopback_http=True, data_keyring="local",
        ).get_store()  # fmt: skip


def test_local_key_files_are_private_and_ids_cannot_escape(
    local_keyring: LocalKeyring, tmp_path: Path
) -> None:
    store = LocalSnapshotStore(tmp_path / "store", keyring=local_keyring)
    ref = store.put_bytes("people", TABLE, ext="csv", format="csv", encrypt=True)
    (key_file,) = _key_files(local_keyring)
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert local_keyring.directory.stat().st_mode & 0o777 == 0o700
    info = store.encryption_info(ref)
    with pytest.raises(IntegrityError, match="not a local keyring key id"):
        local_keyring.unwrap("../../" + info.key_id, info.wrapped_key, info.context)
    with pytest.raises(IntegrityError, match="not a local keyring key id"):
        local_keyring.shred("../x", reason="x")


@pytest.mark.parametrize("streamed", [False, True])
def test_an_encrypted_write_does_not_settle_for_a_plaintext_copy(
    tmp_path: Path, local_keyring: LocalKeyring, streamed: bool
) -> None:
    store = LocalSnapshotStore(tmp_path / "store", fsync=False, keyring=local_keyring)
    data = b"case_id,name\nC00001,Alice Example\n"
    plain = store.put_bytes("cases", data, ext="csv", format="csv")
    assert store.encryption_info(plain.key) is None

    def put() -> SnapshotRef:
        if streamed:
            return store.put_stream("cases", iter([data]), ext="csv", format="csv", encrypt=True)
        return store.put_bytes("cases", data, ext="csv", format="csv", encrypt=True)

    # The plaintext copy could never be shredded: the encrypted one is a generation of its own.
    encrypted = put()
    assert encrypted.created
    assert encrypted.key.endswith(f"{plain.sha256}.g2.csv")
    assert store.encryption_info(encrypted.key) is not None
    assert store.read_bytes(encrypted) == data
    again = put()
    assert not again.created
    assert again.key == encrypted.key
