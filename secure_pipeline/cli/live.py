"""``secure-pipeline live``: live traffic evidence from outside the slots.

``live feedback FILE`` records the true labels of earlier predictions from a landing file (CSV
with a header, or Parquet, with the columns ``id`` and ``label``), checked as ``POST /feedback``
checks them, as one feedback batch signed by the ``serve`` identity: the live checks join it
with the recorded traffic on the prediction ids.
"""

import datetime as dt
from pathlib import Path
from typing import Any

import click

from secure_pipeline.cli._common import _PIPELINE_OPTION, _fail, _pipeline, _store

_COLUMNS = ("id", "label")


@click.group()
def live() -> None:
    """Live traffic evidence: feedback labels for the live checks."""


@live.command("feedback")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_PIPELINE_OPTION
def live_feedback(file: Path, pipeline_spec: str | None) -> None:
    """Record the true labels in FILE (CSV or Parquet: columns id, label) as a signed batch."""
    from secure_pipeline.errors import SecurePipelineError
    from secure_pipeline.serving.recording import FEEDBACK, utc_iso, write_batch
    from secure_pipeline.serving.server import feedback_label, feedback_rows
    from secure_pipeline.trust.identities import SERVE
    from secure_pipeline.trust.signers import signer_for

    pipeline = _pipeline(pipeline_spec)
    label = feedback_label(pipeline)
    if label is None:
        _fail(f"pipeline {pipeline.name!r} has no label column: there is nothing to feed back", 2)
    items = _read_items(file, label.dtype)
    limit = pipeline.monitoring.max_batch_rows
    if not items:
        _fail(f"{file} holds no feedback rows", 2)
    if len(items) > limit:
        _fail(
            f"{file} holds {len(items)} rows; one batch holds at most {limit} "
            "(monitoring.max_batch_rows): split the file",
            2,
        )
    rows, problems = feedback_rows(items, label)
    if problems:
        shown = "; ".join(
            f"row {p['item'] + 1}"
            + (f" {p['field']}" if "field" in p else "")
            + f": expected {p['expected']}, found {p.get('found')!r}"
            for p in problems[:10]
        )
        _fail(
            f"{file} is not feedback for {pipeline.name} (ids of predictions, values of the "
            f"label column {label.name!r}): {shown}",
            2,
        )
    import pandas as pd

    now = utc_iso(dt.datetime.now(dt.UTC))
    frame = pd.DataFrame({"id": [r[0] for r in rows], "label": [r[1] for r in rows]})
    try:
        key, envelope = write_batch(
            _store(), signer_for(SERVE), pipeline, kind=FEEDBACK, frame=frame,
            predicate_fields={
                "slot": "", "model_sha256": "", "model_version": "", "opened_at": now,
                "closed_at": now, "scored": 0, "dropped": 0, "requests": 0, "errors": 0,
                "refusals": 0, "sample_rate": 1.0, "source": file.name,
            },
        )  # fmt: skip
    except SecurePipelineError as exc:
        _fail(str(exc), 2)
    click.echo(f"recorded {len(rows)} feedback label(s) of {pipeline.name} in {key}")
    click.echo(f"signed by {SERVE}: {envelope}")


def _read_items(file: Path, dtype: str) -> list[dict[str, Any]]:
    """The rows of a landing file as ``{"id", "label"}`` items (values typed as JSON's)."""
    import pandas as pd

    try:
        if file.suffix.lower() == ".parquet":
            frame = pd.read_parquet(file)
        else:
            # Text as text: an id must not become a number, a label keeps its spelling.
            frame = pd.read_csv(file, dtype=str, keep_default_na=False)
    except (OSError, ValueError, ImportError) as exc:
        _fail(f"cannot read {file} as {'Parquet' if file.suffix == '.parquet' else 'CSV'} "
              f"({type(exc).__name__})", 2)  # fmt: skip
    columns = [str(c) for c in frame.columns]
    if sorted(columns) != sorted(_COLUMNS):
        _fail(f"{file} must have exactly the columns id and label, found {columns}", 2)
    return [
        {"id": _plain(row["id"], "string"), "label": _plain(row["label"], dtype)}
        for row in frame[list(_COLUMNS)].astype(object).to_dict(orient="records")
    ]


def _plain(value: Any, dtype: str) -> Any:
    """A file value as a JSON document would carry it for a column of ``dtype``."""
    if hasattr(value, "item"):  # numpy scalars from Parquet
        value = value.item()
    if value is None or (isinstance(value, float) and value != value):
        return None
    if not isinstance(value, str):
        return value
    if value == "":
        return None
    if dtype in ("int", "float"):
        try:
            number = float(value)
        except ValueError:
            return value  # refused by the check, shown as written
        return int(number) if dtype == "int" and number.is_integer() else number
    if dtype == "bool":
        return {"true": True, "false": False}.get(value.lower(), value)
    return value
