"""Tables as Parquet bytes: zstd-compressed, deterministic for equal input.

Equal tables give equal bytes (same pyarrow version), so re-materializing unchanged data is a
no-op in the content-addressed store and keeps the same data version in Dagster.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

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
