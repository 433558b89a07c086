"""S3 snapshot store vs raw boto3 put + get of the same bytes, against one moto server.

The moto server runs as its own process, as S3 would: in-process (ThreadedMotoServer) it
would share this interpreter's GIL with the client and bill its own CPU time to the client.

Goal: <= 1.15x. The store variant sends SHA-256 checksums, writes create-only (If-None-Match),
stores a manifest beside each object, and re-hashes on read; objects of 64 MiB and more go up as
multipart uploads with per-part checksums. Fresh random bytes per repetition (identical content
would be deduplicated).
"""

import os

import boto3
from _common import interleaved, moto_server, report

from secure_pipeline.storage.s3 import S3SnapshotStore

SIZES = {"1 MiB": 1 << 20, "16 MiB": 16 << 20, "96 MiB (multipart)": 96 << 20}


def main() -> None:
    server, endpoint = moto_server()
    try:
        raw = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        raw.create_bucket(Bucket="bench-raw")
        raw.create_bucket(Bucket="bench-store")
        for bucket in ("bench-raw", "bench-store"):
            raw.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        store = S3SnapshotStore(
            "bench-store", endpoint_url=endpoint, region="us-east-1", allow_loopback_http=True
        )
        worst = 0.0
        for label, size in SIZES.items():
            repeats = 9 if size < (32 << 20) else 5

            def boto(size: int = size) -> None:
                data = os.urandom(size)
                key = f"raw/{os.urandom(8).hex()}"
                raw.put_object(Bucket="bench-raw", Key=key, Body=data)
                assert len(raw.get_object(Bucket="bench-raw", Key=key)["Body"].read()) == size

            def ours(size: int = size) -> None:
                data = os.urandom(size)
                ref = store.put_bytes("bench", data, ext="bin", format="bytes")
                assert len(store.read_bytes(ref)) == size

            times = interleaved({"raw boto3 put+get": boto, "snapshot store": ours}, repeats)
            worst = max(worst, report(f"S3 object of {label}", times, "raw boto3 put+get", 1.15))
        print(f"\nworst ratio over all sizes: {worst:.2f}x (goal <= 1.15x)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
