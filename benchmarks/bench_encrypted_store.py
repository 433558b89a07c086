"""Encrypted vs plaintext snapshots: write + verified read of a 1M x 15 table, local store.

Goal: <= 1.15x. Both variants do what the pipeline does: Parquet (zstd) in memory, SHA-256,
create-only write (spool file, fsync, read-only, link, manifest), then a read that verifies
before parsing. The encrypted variant also makes a per-snapshot key in the local keyring
(a 0600 key file, fsynced), encrypts into the spool in 4 MiB AES-256-GCM chunks, and on read
unwraps the data key, authenticates every chunk and then checks the plaintext digest. Each
repetition uses fresh directories, since re-writing identical content is a no-op.
"""

import shutil
import tempfile
from pathlib import Path

from _common import interleaved, report
from bench_local_store import ROWS, adult_like_table

from secure_pipeline.storage.keyrings import LocalKeyring
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.storage.tables import parquet_to_table, table_to_parquet


def main() -> None:
    table = adult_like_table()
    work = Path(tempfile.mkdtemp(prefix="bench-encrypted-"))
    counter = {"n": 0}
    sizes: dict[str, int] = {}

    def fresh(name: str) -> Path:
        counter["n"] += 1
        path = work / f"{name}-{counter['n']}"
        path.mkdir()
        return path

    def variant(encrypt: bool):
        def run() -> None:
            keyring = LocalKeyring(fresh("keys") / "data-keys") if encrypt else None
            store = LocalSnapshotStore(fresh("store"), keyring=keyring)
            data = table_to_parquet(table)
            ref = store.put_bytes(
                "features", data, ext="parquet", format="parquet", encrypt=encrypt
            )
            assert parquet_to_table(store.read_bytes(ref)).num_rows == ROWS
            sizes["parquet"] = len(data)
            sizes["encrypted" if encrypt else "plaintext"] = (store.root / ref.key).stat().st_size

        return run

    serialized = table_to_parquet(table)

    def store_only(encrypt: bool):
        """The store's share alone (no Parquet): where the encryption cost shows undiluted."""

        def run() -> None:
            keyring = LocalKeyring(fresh("keys") / "data-keys") if encrypt else None
            store = LocalSnapshotStore(fresh("store"), keyring=keyring)
            ref = store.put_bytes(
                "features", serialized, ext="parquet", format="parquet", encrypt=encrypt
            )
            assert len(store.read_bytes(ref)) == len(serialized)

        return run

    try:
        times = interleaved(
            {
                "plaintext: write+verified read": variant(False),
                "encrypted (local keyring): write+verified read": variant(True),
            },
            repeats=9,
        )
        store_times = interleaved(
            {
                "plaintext: put_bytes+read_bytes": store_only(False),
                "encrypted: put_bytes+read_bytes": store_only(True),
            },
            repeats=15,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nParquet {sizes['parquet'] / 2**20:.1f} MiB; stored plaintext "
        f"{sizes['plaintext']:,} B, encrypted {sizes['encrypted']:,} B"
    )
    report(
        f"encrypted local store, {ROWS:,} rows x 15 columns",
        times,
        "plaintext: write+verified read",
        goal=1.15,
    )
    report(
        "store operations alone (same Parquet bytes, no serialization)",
        store_times,
        "plaintext: put_bytes+read_bytes",
        goal=None,
    )


if __name__ == "__main__":
    main()
