"""The quarantine table: every rejected row, as it arrived, with the reason it was rejected.

It holds no more personal data than ``validated_*``: ignored and personal columns are left
out, a pseudonymised one shows its keyed hash, and an unparseable line of a file with such
columns shows no text (parsing withholds it).
"""

from typing import TYPE_CHECKING

from secure_pipeline.spec import RESERVED_SPLIT_COLUMN, DatasetSchema
from secure_pipeline.validation.parsing import ParsedBatch
from secure_pipeline.validation.schema import SchemaReport

if TYPE_CHECKING:
    import pyarrow as pa


def quarantine_table(
    batch: ParsedBatch, report: SchemaReport, schema: DatasetSchema, key: bytes | None = None
) -> "pa.Table":
    """Build the quarantine table of a validated batch.

    Columns: ``split`` (the file), ``line`` (for lines that could not be parsed), ``reason``,
    ``text`` (the start of an unparseable line), then every kept schema column as text — the
    value that arrived, not the null it became after a failed conversion (a pseudonymised
    column: the keyed hash of that value).

    Args:
        batch: The parsed batch.
        report: Its validation report.
        schema: The declared schema.
        key: The pipeline's pseudonymisation key; needed when a column is pseudonymised.

    Returns:
        The table (possibly empty, with the same columns).
    """
    import numpy as np
    import pyarrow as pa

    from secure_pipeline.validation.pseudonyms import pseudonymise, pseudonymised_columns

    present = set(batch.text.column_names) if batch.text is not None else set()
    names = [n for n in schema.kept_names if n in present]
    hashed = set(pseudonymised_columns(schema, key))
    positions = (
        np.flatnonzero(report.rejected) if report.rejected is not None else np.array([], int)
    )
    parts = []
    if batch.text is not None and len(positions):
        rows = batch.text.take(pa.array(positions))

        def text(name: str) -> "pa.Array":
            values = rows.column(name).cast(pa.string())
            if name in hashed:
                return pa.array(pseudonymise(values.to_pylist(), key or b""), pa.string())
            return values

        parts.append(
            pa.table(
                {
                    "split": rows.column(RESERVED_SPLIT_COLUMN).cast(pa.string()),
                    "line": pa.nulls(len(positions), pa.int64()),
                    "reason": pa.array(
                        ["; ".join(report.reasons.get(int(p), [])) for p in positions], pa.string()
                    ),
                    "text": pa.nulls(len(positions), pa.string()),
                    **{n: text(n) for n in names},
                }
            )
        )
    lines = report.rejected_lines
    if lines:
        parts.append(
            pa.table(
                {
                    "split": pa.array([r.member for r in lines], pa.string()),
                    "line": pa.array([r.line for r in lines], pa.int64()),
                    "reason": pa.array([r.reason for r in lines], pa.string()),
                    "text": pa.array([r.text for r in lines], pa.string()),
                    **{n: pa.nulls(len(lines), pa.string()) for n in names},
                }
            )
        )
    if not parts:
        schema = pa.schema(
            [("split", pa.string()), ("line", pa.int64()), ("reason", pa.string()),
             ("text", pa.string()), *((n, pa.string()) for n in names)]
        )  # fmt: skip
        return schema.empty_table()
    return pa.concat_tables(parts)
