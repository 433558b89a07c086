"""The snapshot store contract, on both backends: create-only, content-addressed, verified."""

import base64
import hashlib
import json
import os
import threading

import pytest

from secure_pipeline.errors import ConfigurationError, IntegrityError
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.storage.s3 import S3SnapshotStore
from secure_pipeline.storage.snapshots import (
    SizeLimitError,
    SnapshotStore,
    sha256_b64,
    snapshot_key,
)
from secure_pipeline_tests.conftest import delete_raw, overwrite_raw, replace_manifest

DATA = b"age,income\n39,<=50K\n50,>50K\n"
DIGEST = hashlib.sha256(DATA).hexdigest()


def test_key_is_content_addressed_and_manifest_recorded(store: SnapshotStore) -> None:
    ref = store.put_bytes(
        "features",
        DATA,
        ext="csv",
        format="csv",
        run_id="run-1",
        code_version="7",
        upstream={"raw_adult": "a" * 64},
        schema={"age": "int64"},
    )
    assert ref.key == f"snapshots/features/{DIGEST}.csv"
    assert ref.sha256 == DIGEST
    assert ref.size == len(DATA)
    assert ref.created
    assert store.read_bytes(ref) == DATA
    manifest = store.read_manifest(ref)
    assert (manifest.sha256, manifest.size, manifest.format) == (DIGEST, len(DATA), "csv")
    assert manifest.upstream == {"raw_adult": "a" * 64}
    assert (manifest.run_id, manifest.code_version) == ("run-1", "7")
    assert manifest.schema == {"age": "int64"}
    assert manifest.created_at.endswith("Z")


def test_partition_goes_into_the_key(store: SnapshotStore) -> None:
    ref = store.put_bytes("daily", DATA, ext="csv", format="csv", partition="2026-11-26")
    assert ref.key == f"snapshots/daily/2026-11-26/{DIGEST}.csv"
    assert store.read_bytes(ref) == DATA


@pytest.mark.parametrize("bad", ["..", "a/b", "", "x" * 200])
def test_unsafe_asset_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="asset key"):
        snapshot_key(bad, DIGEST, "csv")


@pytest.mark.parametrize("partition", ["..", ".", "a/../../etc"])
def test_partition_keys_cannot_traverse(partition: str) -> None:
    key = snapshot_key("daily", DIGEST, "csv", partition)
    assert key.split("/")[2] not in (".", "..")
    assert len(key.split("/")) == 4


def test_identical_rewrite_is_a_no_op_that_keeps_the_first_manifest(store: SnapshotStore) -> None:
    first = store.put_bytes("raw", DATA, ext="csv", format="csv", run_id="run-1")
    second = store.put_bytes("raw", DATA, ext="csv", format="csv", run_id="run-2")
    assert first.created
    assert not second.created
    assert second.key == first.key
    assert store.read_manifest(second).run_id == "run-1"


def test_different_bytes_under_an_existing_key_raise_and_keep_stored_bytes(
    store: SnapshotStore,
) -> None:
    assert store.create_object("records/1.json", b'{"a":1}')
    with pytest.raises(IntegrityError, match="refusing to overwrite") as err:
        store.create_object("records/1.json", b'{"a":2}')
    assert "records/1.json" in str(err.value)
    assert store.read_object("records/1.json") == b'{"a":1}'
    # identical bytes again: accepted, nothing written
    assert store.create_object("records/1.json", b'{"a":1}') is False


def test_corrupt_object_under_content_key_is_not_overwritten(store: SnapshotStore) -> None:
    """A key that holds bytes not matching its digest is evidence: a re-write refuses."""
    ref = store.put_bytes("raw", DATA, ext="csv", format="csv")
    overwrite_raw(store, ref.key, b"tampered")
    with pytest.raises(IntegrityError, match="already holds different bytes"):
        store.put_bytes("raw", DATA, ext="csv", format="csv")
    assert store.read_object(ref.key) == b"tampered"


def test_flipped_byte_is_refused_on_read(store: SnapshotStore) -> None:
    ref = store.put_bytes("features", DATA, ext="csv", format="csv")
    flipped = bytearray(DATA)
    flipped[5] ^= 0x01
    overwrite_raw(store, ref.key, bytes(flipped))
    with pytest.raises(IntegrityError) as err:
        store.read_bytes(ref)
    message = str(err.value)
    assert ref.key in message
    assert f"expected sha256 {DIGEST}" in message
    assert f"found {hashlib.sha256(bytes(flipped)).hexdigest()}" in message


def test_flipped_byte_is_refused_on_streaming_download(store: SnapshotStore, tmp_path) -> None:
    ref = store.put_bytes("features", DATA, ext="csv", format="csv")
    overwrite_raw(store, ref.key, DATA.replace(b"39", b"93"))
    target = tmp_path / "out.csv"
    with pytest.raises(IntegrityError, match="failed verification"):
        store.download_to(ref, target)
    assert not target.exists()


def test_deleted_snapshot_is_reported(store: SnapshotStore) -> None:
    ref = store.put_bytes("features", DATA, ext="csv", format="csv")
    delete_raw(store, ref.key)
    with pytest.raises(IntegrityError, match="missing"):
        store.read_bytes(ref)


def test_manifest_for_another_snapshot_is_refused(store: SnapshotStore) -> None:
    a = store.put_bytes("t", b"a", ext="bin", format="bytes")
    b = store.put_bytes("t", b"b", ext="bin", format="bytes")
    replace_manifest(store, a.key, b.key)
    with pytest.raises(IntegrityError, match="describes"):
        store.read_manifest(a)


def test_stream_is_hashed_in_one_pass_and_size_limited(store: SnapshotStore) -> None:
    chunks = [b"x" * 1000] * 10
    ref = store.put_stream("raw", iter(chunks), ext="bin", format="bytes", max_bytes=10_000)
    assert ref.sha256 == hashlib.sha256(b"x" * 10_000).hexdigest()
    with pytest.raises(SizeLimitError, match="limit of 9999 bytes"):
        store.put_stream("big", iter(chunks), ext="bin", format="bytes", max_bytes=9_999)
    assert list(store.list_keys("snapshots/big/")) == []


def test_large_object_round_trip(store: SnapshotStore) -> None:
    """On S3 (threshold 6 MiB in the fixture) this goes through multipart upload with checksums."""
    data = os.urandom(13 * 1024 * 1024)
    mib = 1 << 20
    chunks = (data[i : i + mib] for i in range(0, len(data), mib))
    ref = store.put_stream("big", chunks, ext="bin", format="bytes")
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert store.read_bytes(ref) == data
    again = store.put_bytes("big", data, ext="bin", format="bytes")
    assert not again.created


def test_concurrent_writers_of_different_bytes_one_wins(store: SnapshotStore) -> None:
    """Two writers race for one key: exactly one wins, the other gets IntegrityError."""
    payloads = [b'{"writer":"a"}' * 5000, b'{"writer":"b"}' * 5000]
    for attempt in range(5):
        key = f"race/{attempt}.json"
        outcomes = _race(store, key, payloads)
        winners = [i for i, o in outcomes.items() if o is True]
        losers = [i for i, o in outcomes.items() if isinstance(o, IntegrityError)]
        assert len(winners) == 1, outcomes
        assert len(losers) == 1, outcomes
        assert store.read_object(key) == payloads[winners[0]]


def _race(store: SnapshotStore, key: str, payloads: list[bytes]) -> dict[int, object]:
    barrier = threading.Barrier(len(payloads))
    outcomes: dict[int, object] = {}

    def write(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = store.create_object(key, payloads[i])
        except IntegrityError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_local_snapshots_are_read_only(local_store: LocalSnapshotStore) -> None:
    ref = local_store.put_bytes("raw", DATA, ext="csv", format="csv")
    path = local_store.root / ref.key
    assert path.stat().st_mode & 0o777 == 0o444
    assert (local_store.root / ref.manifest_key).stat().st_mode & 0o777 == 0o444
    assert not list((local_store.root / ".spool").iterdir())


def test_local_concurrent_processes(local_store: LocalSnapshotStore) -> None:
    """Separate processes (not just threads) racing for the same key."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_write_in_process, [(str(local_store.root), i) for i in range(4)])
    assert results.count("created") == 1
    assert results.count("refused") == 3
    winner = json.loads(local_store.read_object("race/key.json"))["writer"]
    assert results[winner] == "created"


def _write_in_process(root: str, writer: int) -> str:
    store = LocalSnapshotStore(root)
    try:
        store.create_object("race/key.json", json.dumps({"writer": writer}).encode())
    except IntegrityError:
        return "refused"
    return "created"


def test_list_keys_is_sorted_and_resumable(store: SnapshotStore) -> None:
    for i in (3, 1, 2):
        store.create_object(f"audit/{i:012d}.json", b"{}")
    keys = list(store.list_keys("audit/"))
    assert keys == [f"audit/{i:012d}.json" for i in (1, 2, 3)]
    assert list(store.list_keys("audit/", start_after=keys[0])) == keys[1:]


def test_s3_writes_carry_sha256_checksums_and_sse_kms(s3_bucket, moto_endpoint, s3_client):
    store = S3SnapshotStore(
        s3_bucket,
        endpoint_url=moto_endpoint,
        region="us-east-1",
        kms_key_id="alias/secure-pipeline",
        allow_loopback_http=True,
        multipart_threshold=6 * 1024 * 1024,
        part_size=5 * 1024 * 1024,
    )
    small = store.put_bytes("t", DATA, ext="csv", format="csv")
    head = s3_client.head_object(Bucket=s3_bucket, Key=small.key, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == sha256_b64(DIGEST)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith("alias/secure-pipeline")
    assert small.version_id == head["VersionId"]

    payload = os.urandom(11 * 1024 * 1024)
    big = store.put_bytes("t", payload, ext="bin", format="bytes")
    head = s3_client.head_object(Bucket=s3_bucket, Key=big.key, ChecksumMode="ENABLED")
    # Multipart: S3 keeps the checksum of the per-part SHA-256 checksums we sent.
    part = 5 * 1024 * 1024
    parts = b"".join(
        hashlib.sha256(payload[i : i + part]).digest() for i in range(0, len(payload), part)
    )
    composite = base64.b64encode(hashlib.sha256(parts).digest()).decode()
    assert head["ChecksumSHA256"].split("-")[0] == composite
    assert head["ServerSideEncryption"] == "aws:kms"
    wide = {f"c{i:04d}_{os.urandom(6).hex()}": "int64" for i in range(300)}
    sidecar = store.put_bytes("t", b"wide", ext="bin", format="bytes", schema=wide)
    manifest = s3_client.head_object(Bucket=s3_bucket, Key=sidecar.manifest_key)
    assert manifest["ServerSideEncryption"] == "aws:kms"


def test_s3_endpoint_must_be_https_unless_loopback_is_allowed() -> None:
    with pytest.raises(ConfigurationError, match="must use https"):
        S3SnapshotStore("b", endpoint_url="http://127.0.0.1:9000")
    with pytest.raises(ConfigurationError, match="must use https"):
        S3SnapshotStore("b", endpoint_url="http://10.1.2.3:9000", allow_loopback_http=True)


def test_extensions_cannot_shadow_manifests_and_names_must_match_whole() -> None:
    with pytest.raises(ValueError, match="extension"):
        snapshot_key("raw", DIGEST, "json.manifest.json")
    with pytest.raises(ValueError, match="asset key"):
        snapshot_key("raw\n", DIGEST, "csv")
    with pytest.raises(ValueError, match="extension"):
        snapshot_key("raw", DIGEST, "csv\n")
    with pytest.raises(ValueError, match="partition key"):
        snapshot_key("raw", DIGEST, "csv", "客户" * 30)


def test_missing_bucket_is_a_configuration_error(moto_endpoint, aws_credentials) -> None:
    store = S3SnapshotStore(
        "sp-no-such-bucket", endpoint_url=moto_endpoint, region="us-east-1",
        allow_loopback_http=True,
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="bucket 'sp-no-such-bucket' does not exist"):
        store.read_bytes(("snapshots/x/" + DIGEST + ".csv", DIGEST))
    with pytest.raises(ConfigurationError, match="does not exist"):
        store.exists("snapshots/x")


def test_loopback_means_a_loopback_address_not_a_name_that_looks_like_one() -> None:
    with pytest.raises(ConfigurationError, match="must use https"):
        S3SnapshotStore(
            "b", endpoint_url="http://127.attacker.example:9000", allow_loopback_http=True
        )
    S3SnapshotStore("b", endpoint_url="http://127.0.0.1:9000", allow_loopback_http=True)
    S3SnapshotStore("b", endpoint_url="http://[::1]:9000", allow_loopback_http=True)


def test_s3_manifest_travels_with_the_object(s3_store, s3_client) -> None:
    small = s3_store.put_bytes("t", DATA, ext="csv", format="csv", schema={"age": "int64"})
    head = s3_client.head_object(Bucket=s3_store.bucket, Key=small.key)
    assert "secure-pipeline-manifest" in head["Metadata"]
    assert not s3_store.exists(small.manifest_key)  # one object, one request
    assert s3_store.read_manifest(small).schema == {"age": "int64"}
    # A schema too wide for S3's 2 KB of metadata goes beside the object instead.
    wide = {f"column_{i:04d}_{os.urandom(4).hex()}": "int64" for i in range(300)}
    big = s3_store.put_bytes("t", b"wide", ext="bin", format="bytes", schema=wide)
    assert s3_store.exists(big.manifest_key)
    assert s3_store.read_manifest(big).schema == wide
