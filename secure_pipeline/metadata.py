"""Builders for the tables and lists the Dagster UI shows in asset and check metadata."""

from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg


def table(rows: Iterable[Mapping[str, Any]], types: Mapping[str, str]) -> dg.TableMetadataValue:
    """A metadata table with the given column types (``string``, ``int``, ``float``, ``bool``)."""
    return dg.MetadataValue.table(
        records=[dg.TableRecord(dict(row)) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(n, t) for n, t in types.items()]),
    )


def bullets(items: Iterable[str]) -> dg.MarkdownMetadataValue:
    """A Markdown bullet list, or "none"."""
    return dg.MetadataValue.md("\n".join(f"- {item}" for item in items) or "none")
