"""Tables as Parquet bytes: zstd-compressed, deterministic for equal input.

Equal tables give equal bytes (same pyarrow version), so re-materializing unchanged data is a
no-op in the content-addressed store and keeps the same data version in Dagster.
"""

import io
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from secure_pipeline.storage.snapshots import SnapshotStore

COMPRESSION = "zstd"


def to_arrow(obj: Any) -> "pa.Table":
    """Convert a pandas DataFrame (or pass through a pyarrow Table)."""
    import pyarrow as pa

    if isinstance(obj, pa.Table):
        return obj
    return pa.Table.from_pandas(obj)


def table_to_parquet(table: "pa.Table") -> bytes:
    """Serialize a table to Parquet bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=COMPRESSION)
    return sink.getvalue().to_pybytes()


def frame_table(frame: Any) -> "pa.Table":
    """A pandas chunk as Arrow, without its index (so every chunk has the same metadata)."""
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


@contextmanager
def verified_row_groups(
    store: "SnapshotStore", ref: tuple[str, str]
) -> "Iterator[Iterator[pa.Table]]":
    """A Parquet snapshot's row groups, one at a time, verified before the first is read.

    A plaintext snapshot is streamed to a private temporary file (verified as it arrives) and
    read a row group at a time, so memory holds one row group. An encrypted one is decrypted
    in memory and never written out in the clear: memory then holds its compressed bytes too.

    Args:
        store: The snapshot store.
        ref: ``(key, sha256)`` of the snapshot.

    Yields:
        An iterator over the row groups, as tables.

    Raises:
        IntegrityError: When the snapshot is missing or fails verification.
    """
    import tempfile
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    if store.encryption_info(ref[0]) is not None:
        file = pq.ParquetFile(pa.BufferReader(store.read_bytes(ref)))
        yield (file.read_row_group(i) for i in range(file.num_row_groups))
        return
    with tempfile.TemporaryDirectory(prefix="snapshot-") as directory:
        path = store.download_to(ref, Path(directory) / "table.parquet")
        with pq.ParquetFile(path) as file:
            yield (file.read_row_group(i) for i in range(file.num_row_groups))


def parquet_to_table(data: bytes) -> "pa.Table":
    """Parse Parquet bytes (already verified by the store) into a table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data))


def schema_summary(table: "pa.Table") -> dict[str, str]:
    """Column name to Arrow type, for manifests."""
    return {
        name: str(field.type) for name, field in zip(table.schema.names, table.schema, strict=True)
    }


class ParquetStream:
    """Tables written as one Parquet file, a row group each, handed out as the bytes are made.

    Memory holds one table and its compressed row group, never the file: `chunks` is a stream
    `SnapshotStore.put_stream` stores as it is made; `write` and `finish` push instead. Every
    table must have the first one's columns and types (it is cast to them, so a chunk whose
    column happens to be all-null still fits). The same tables in the same order give the same
    bytes; one table gives exactly the bytes of `table_to_parquet`.

    Attributes:
        rows: Rows written so far.
        schema: The file's schema (None until the first table).
    """

    def __init__(self) -> None:
        """Start an empty stream."""
        self.rows = 0
        self.schema: pa.Schema | None = None
        self._sink = _Sink()
        self._writer: Any = None

    def write(self, table: "pa.Table") -> bytes:
        """Write one table as a row group; the file's bytes made since the last call."""
        import pyarrow.parquet as pq

        if self._writer is None:
            # The first table's metadata stays: pandas' (nullable and string dtypes) must
            # survive the round trip. Frames go in without their index (``preserve_index=
            # False``), so it holds nothing that differs between chunks.
            self.schema = table.schema
            self._writer = pq.ParquetWriter(self._sink, self.schema, compression=COMPRESSION)
        assert self.schema is not None
        self._writer.write_table(table if table.schema == self.schema else table.cast(self.schema))
        self.rows += table.num_rows
        return self._sink.take()

    def finish(self) -> bytes:
        """Close the file; its last bytes (the footer).

        Raises:
            ValueError: When no table was written (a Parquet file needs a schema).
        """
        if self._writer is None:
            raise ValueError("a Parquet stream needs at least one table, even an empty one")
        self._writer.close()
        return self._sink.take()

    def chunks(self, tables: "Iterable[pa.Table]") -> "Iterator[bytes]":
        """Write ``tables`` in order, yielding the file's bytes as each row group is made."""
        for table in tables:
            data = self.write(table)
            if data:
                yield data
        yield self.finish()

    def summary(self) -> dict[str, Any]:
        """``rows`` and ``schema`` (column name to Arrow type), for the manifest."""
        assert self.schema is not None, "summary() of a stream that wrote nothing"
        return {
            "rows": self.rows,
            "schema": {field.name: str(field.type) for field in self.schema},
        }


class _Sink(io.RawIOBase):
    """Collects what the Parquet writer writes; ``tell`` counts every byte ever written.

    The writer records row-group offsets from ``tell``: a buffer emptied as it goes must still
    report the position in the whole file.
    """

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        """What was written since the last call."""
        data = b"".join(self._parts)
        self._parts.clear()
        return data
