"""Raw delimited files to typed tables, keeping every problem instead of guessing.

Parsing is where "handled by luck" usually happens: a comment line swallowed as data, a label
with a trailing period treated as a new class, a stray ``?`` turned into a string. Here each of
those is declared in the `DatasetSchema` and applied explicitly:

1. file-level problems (empty, not text, not UTF-8, wrong header) make the whole batch fail;
2. lines that do not split into the declared number of fields are rejected with the reason;
3. values are trimmed, missing-value tokens become nulls, declared aliases are mapped;
4. each column is converted to its declared type; a value that does not convert is a row-level
   type failure (the row is rejected later), never silently nulled.

A header is verified against the columns' header names as a multiset: a name the header
repeats is read once per declared ``occurrence``, each column from its own occurrence. Columns
with role ``ignore`` are counted (header, number of fields) but their values are never
converted, nor kept; values of ``personal`` columns are converted and checked, but never quoted
in a problem, an example or an unparseable line's text.

pyarrow's multi-threaded CSV reader does the splitting; conversions are vectorized.
"""

import csv
import io
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from secure_pipeline.spec import RESERVED_SPLIT_COLUMN, Column, DatasetSchema

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

_INT = r"^[+-]?[0-9]+$"
_FLOAT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")
_EXAMPLE_CHARS = 80
# Shown instead of a value that must not leave the parser: a personal column's, or a whole
# unparseable line of a file that has personal or ignored columns.
WITHHELD = "(withheld: personal or ignored data)"
# ISO 8601 when a date column declares no format: a date is exactly YYYY-MM-DD.
_ISO_DATE = "%Y-%m-%d"


@dataclass(frozen=True)
class RejectedLine:
    """A line that could not be split into the declared columns.

    Attributes:
        member: The source file it came from.
        line: Line number in the file (1-based; blank lines are not counted).
        reason: What was expected and what was found.
        text: The start of the line.
    """

    member: str
    line: int
    reason: str
    text: str


@dataclass
class ParsedBatch:
    """All files of a raw fileset, parsed and typed.

    Attributes:
        frame: One row per accepted line, columns in schema order plus ``split`` (the member),
            without ``ignore`` columns. Typed per the schema (dates as ``datetime64``); a value
            that failed conversion is null here and flagged in ``type_failures``. Personal
            columns are still here, to be checked: `validated_rows` drops them.
        type_failures: Column name to a boolean mask of rows whose value did not convert: the
            wrong type, or a category outside the allowed values.
        type_examples: Column name to a few raw values that did not convert (`WITHHELD` for
            a personal column).
        rejected_lines: Lines that did not have the declared number of fields.
        problems: File-level problems; any one fails the batch.
        comment_lines: Comment lines dropped, by member.
        raw_rows: Rows read per member (accepted lines, before validation).
        text: The same rows as text (trimmed, aliases applied, before conversion), so that a
            quarantined row shows the value that failed rather than a null. It holds personal
            columns too (pseudonyms are made from it): the quarantine drops or hashes them.
    """

    frame: "pd.DataFrame"
    type_failures: dict[str, Any] = field(default_factory=dict)
    type_examples: dict[str, list[str]] = field(default_factory=dict)
    rejected_lines: list[RejectedLine] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    comment_lines: dict[str, int] = field(default_factory=dict)
    raw_rows: dict[str, int] = field(default_factory=dict)
    text: "pa.Table | None" = None

    @property
    def total_lines(self) -> int:
        """Data lines seen: parsed rows plus lines rejected for their field count."""
        return len(self.frame) + len(self.rejected_lines)


def _mark_comments(data: bytes, prefix: bytes) -> tuple[bytes, int]:
    """Reduce every comment line to the bare prefix: one field, never a valid row.

    The reader then hands each comment to the invalid-row handler, which drops it as a
    comment. Lines are not removed, so reported line numbers stay those of the file.
    """
    if not (data.startswith(prefix) or b"\n" + prefix in data):
        return data, 0
    lines = data.split(b"\n")
    count = sum(1 for line in lines if line.startswith(prefix))
    return b"\n".join(prefix if line.startswith(prefix) else line for line in lines), count


def _file_problem(
    member: str, data: bytes, schema: DatasetSchema, *, start: bool = True
) -> str | None:
    """Empty, or binary: NUL bytes in the first 64 KiB of the file (``start``: ``data`` is it)."""
    if not data.strip():
        return f"file {member!r} is empty: expected {schema.name} rows, found no data"
    if start and b"\x00" in data[:65536]:
        return (
            f"file {member!r} is not text: it contains NUL bytes (binary data where "
            f"{schema.name} CSV was expected)"
        )
    return None


def _utf8_problem(member: str, data: bytes, byte_offset: int = 0) -> str:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"file {member!r} is not valid UTF-8 text (byte {byte_offset + exc.start}: "
            f"{exc.reason}); "
            "re-export the file as UTF-8"
        )
    return ""


def _header_problem(member: str, found: list[str], schema: DatasetSchema) -> str | None:
    """What is wrong with a header, or None when it names exactly the declared header names.

    The comparison is of multisets: order does not matter, and a name the header repeats must
    be declared once per occurrence.
    """
    expected = Counter(c.header_name for c in schema.columns)
    seen = Counter(found)
    if seen == expected:
        return None
    declared = list(dict.fromkeys(c.header_name for c in schema.columns))
    missing = [n for n in declared if n not in seen]
    unexpected = [n for n in dict.fromkeys(found) if n not in expected]
    duplicated = [n for n in dict.fromkeys(found) if seen[n] > expected[n] > 0]
    short = [n for n in declared if 0 < seen[n] < expected[n]]
    parts = [
        f"file {member!r}: the header ({len(found)} columns) does not match the "
        f"{len(schema.columns)} declared columns"
    ]
    if missing:
        parts.append(f"missing: {missing!r}")
    if unexpected:
        parts.append(f"unexpected: {unexpected!r}")
    if duplicated:
        counts = ", ".join(f"{n!r} {seen[n]} times (declared {expected[n]})" for n in duplicated)
        example = duplicated[0]
        parts.append(
            f"duplicated: {duplicated!r}: the header repeats {counts}. To read a repeated "
            "name, declare one column per occurrence, each with its own name, "
            f"source={example!r} and occurrence=1, 2, ... (role 'ignore' for a copy that "
            "is not needed)"
        )
    if short:
        counts = ", ".join(f"{n!r} {seen[n]} of {expected[n]} times" for n in short)
        parts.append(f"fewer occurrences than declared: {counts}")
    return "; ".join(parts) + " (renamed or added columns are schema drift: update the schema)"


def _header_names(member: str, found: list[str], schema: DatasetSchema) -> tuple[list[str], str]:
    """The column name of each header position, and a problem (empty when there is none).

    The n-th ``x`` of the header is the column that reads ``x``, occurrence n.
    """
    by_header = {(c.header_name, c.occurrence): c.name for c in schema.columns}
    counts: Counter[str] = Counter()
    names = []
    for header in found:
        counts[header] += 1
        name = by_header.get((header, counts[header]))
        if name is None:
            declared = sorted(o for h, o in by_header if h == header)
            return [], (
                f"file {member!r}: header name {header!r} occurrence {counts[header]} is not "
                f"declared (declared occurrences: {declared}); declare occurrences 1 to "
                f"{found.count(header)}, one column each"
            )
        names.append(name)
    return names, ""


def first_line(data: bytes) -> bytes:
    r"""The first line of ``data`` without its end (``\n``, ``\r\n`` or a lone ``\r``)."""
    end = data.find(b"\n")
    end = len(data) if end < 0 else end
    carriage = data.find(b"\r", 0, end)  # within the first line only, not the whole chunk
    return data[: carriage if carriage >= 0 else end]


def _withholds(schema: DatasetSchema) -> bool:
    """Whether the schema has columns whose values must not be quoted.

    They tie a row to a person, and check metadata lives in the event log, which erasure cannot
    shred.
    """
    return any(c.role in ("personal", "identifier", "ignore") for c in schema.columns)


def _read_member(
    member: str,
    data: bytes,
    schema: DatasetSchema,
    batch: ParsedBatch,
    *,
    whole: bool = True,
    first: bool = True,
    byte_offset: int = 0,
) -> "pa.Table | None":
    """Read one member (``whole``) or one chunk of lines of it, header first, into strings.

    A chunk (``whole=False``) that holds no data is no problem, nor is one whose lines all have
    the wrong number of fields: whether the member has any data is decided over all its chunks.
    ``byte_offset`` places a chunk's bytes in the member, for the error that names a byte;
    ``first`` says the chunk is the member's first (where binary data is looked for).
    """
    import pyarrow as pa

    if schema.comment_prefix:
        data, comments = _mark_comments(data, schema.comment_prefix.encode())
        batch.comment_lines[member] = comments
    problem = _file_problem(member, data, schema, start=whole or first)
    if problem and not whole and not data.strip():
        # A chunk of whitespace: blank lines are no rows; a line of spaces is a row to judge
        # (whether the member is empty is decided over all its chunks).
        if not data.strip(b"\r\n"):
            return None
        problem = None
    if problem:
        batch.problems.append(problem)
        return None
    names = list(schema.column_names)
    skip = 0
    if schema.has_header:
        # Blank lines before the header are no rows: without them, the reader's one skipped
        # row is the header itself.
        stripped = data.lstrip(b"\r\n")
        byte_offset += len(data) - len(stripped)
        data = stripped
        first = first_line(data).decode("utf-8", "replace")
        # Names exactly as written: surrounding whitespace in a name is drift too.
        found = next(csv.reader([first], delimiter=schema.delimiter), [])
        problem = _header_problem(member, found, schema)
        if not problem:
            # The reader gets one unique name per position (a header may repeat a name) and
            # skips the header row it has just been checked against.
            names, problem = _header_names(member, found, schema)
        if problem:
            batch.problems.append(problem)
            return None
        skip = 1
    # Ignored columns count as fields, but their values are never converted nor kept.
    read = [c.name for c in schema.columns if c.role != "ignore"]
    try:
        table, rejected = _read_csv(member, data, schema, names, read, skip, threads=True)
        if rejected:
            # The threaded reader cannot number rejected lines; the rare file that has any is
            # read again on one thread so the quarantine can say where each line was.
            table, rejected = _read_csv(member, data, schema, names, read, skip, threads=False)
    except pa.ArrowInvalid as exc:
        # pyarrow checks UTF-8 as it converts; decode only now to say where it broke.
        batch.problems.append(
            _utf8_problem(member, data, byte_offset)
            or f"file {member!r} could not be parsed as {schema.name} CSV: "
            + (WITHHELD if _withholds(schema) else str(exc))
        )
        return None
    batch.rejected_lines.extend(rejected)
    comments = batch.comment_lines.get(member, 0)
    # Only a quote makes the reader join lines: without one, every line is a row or rejected.
    lines = sum(1 for line in data.splitlines() if line) - skip if b'"' in data else 0
    if lines and table.num_rows + len(rejected) + comments != lines:
        # The reader joined lines: a quote opened in a field and not closed on its line takes
        # the lines after it into that field. Those rows would be neither kept nor quarantined.
        batch.problems.append(
            f"file {member!r}: {lines} lines, but {table.num_rows + len(rejected) + comments} "
            'rows: a quote (") opened in a field is not closed on the same line, so lines were '
            "read into it. A quoted value must not span lines; fix the quoting at the source"
        )
        return None
    if table.num_rows == 0 and rejected and whole:
        batch.problems.append(
            f"file {member!r}: no line has the declared {len(names)} fields "
            f"({rejected[0].reason} on line {rejected[0].line}); wrong delimiter or format?"
        )
        return None
    batch.raw_rows[member] = table.num_rows
    return table.select(read)


def _read_csv(
    member: str,
    data: bytes,
    schema: DatasetSchema,
    names: list[str],
    read: list[str],
    skip: int,
    threads: bool,
) -> tuple["pa.Table", list[RejectedLine]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rejected: list[RejectedLine] = []

    comment = schema.comment_prefix
    # A line that does not split cannot be told apart into columns: with personal or ignored
    # columns in the file, its text may hold their values.
    withhold = _withholds(schema)

    def on_invalid(row: Any) -> str:
        if comment is not None and row.text == comment:
            return "skip"  # a comment line, reduced to its prefix by _mark_comments
        rejected.append(
            RejectedLine(
                member,
                row.number if row.number is not None else -1,
                f"expected {row.expected_columns} fields, found {row.actual_columns}",
                WITHHELD if withhold else (row.text or "")[:_EXAMPLE_CHARS],
            )
        )
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip, use_threads=threads),
        parse_options=pacsv.ParseOptions(
            delimiter=schema.delimiter, invalid_row_handler=on_invalid
        ),
        convert_options=pacsv.ConvertOptions(
            include_columns=read,
            column_types={n: pa.string() for n in read},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    return table, rejected


def _clean(column: "pa.ChunkedArray", spec: Column, missing: tuple[str, ...]) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    values = pc.utf8_trim_whitespace(column)
    nulls = list(missing) + ([""] if spec.dtype != "string" else [])
    if nulls:
        values = pc.if_else(pc.is_in(values, pa.array(nulls)), pa.scalar(None, pa.string()), values)
    for raw, canonical in spec.aliases:
        values = pc.if_else(pc.equal(values, raw), canonical, values)
    return values


def _convert(values: Any, spec: Column) -> tuple["pd.Series", Any]:
    """Convert cleaned strings to the column's type; return the series and a failure mask."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    present = pc.is_valid(values)
    if spec.dtype in ("int", "float"):
        pattern = _INT if spec.dtype == "int" else _FLOAT
        ok = pc.match_substring_regex(values, pattern)
        bad = pc.and_(present, pc.invert(ok))
        usable = pc.if_else(ok, values, pa.scalar(None, pa.string()))
        target = pa.int64() if spec.dtype == "int" else pa.float64()
        try:
            converted = pc.cast(usable, target)
        except pa.ArrowInvalid:  # an integer beyond 64 bits: judge each value
            numbers = pd.to_numeric(pd.Series(usable.to_pylist(), dtype=object), errors="coerce")
            limit = np.iinfo(np.int64)
            fits = numbers.between(limit.min, limit.max)
            bad = pc.or_(bad, pa.array((~fits & numbers.notna()).to_numpy()))
            converted = pa.array(numbers.where(fits).astype("Int64"), type=target)
        if spec.dtype == "int":
            series = converted.to_pandas(types_mapper={target: pd.Int64Dtype()}.get)
        else:
            series = converted.to_pandas().astype("float64")
            # "1e999" matches the number pattern but is infinite: not a usable value
            infinite = np.isinf(series.to_numpy())
            if infinite.any():
                bad = pc.or_(bad, pa.array(infinite))
                series = series.where(~infinite)
    elif spec.dtype == "bool":
        lowered = pc.utf8_lower(values)
        true = pc.is_in(lowered, pa.array(_TRUE))
        false = pc.is_in(lowered, pa.array(_FALSE))
        bad = pc.and_(present, pc.invert(pc.or_(true, false)))
        series = pd.Series(
            pc.if_else(
                true, True, pc.if_else(false, False, pa.scalar(None, pa.bool_()))
            ).to_pandas(),
            dtype="boolean",
        )
    elif spec.dtype == "category":
        # Codes into the declared categories: an unknown value is a failure here, because
        # casting it to the categorical type would silently turn it into a missing value.
        allowed = pa.array(list(spec.allowed or ()), pa.string())
        codes = pc.index_in(values, value_set=allowed)
        bad = pc.and_(present, pc.is_null(codes))
        filled = np.asarray(pc.fill_null(codes, -1).to_numpy(zero_copy_only=False), dtype="int32")
        series = pd.Series(pd.Categorical.from_codes(filled, categories=list(spec.allowed or ())))
    elif spec.dtype in ("date", "datetime"):
        return _convert_dates(values, spec)
    else:  # free text
        series = values.to_pandas().astype("string")
        return series, np.zeros(len(values), dtype=bool)
    return series, np.asarray(bad.to_numpy(zero_copy_only=False), dtype=bool)


def _convert_dates(values: Any, spec: Column) -> tuple["pd.Series", Any]:
    """Parse dates with the column's ``strptime`` format, or ISO 8601 when it declares none.

    A value with a UTC offset is converted to UTC; one without is taken as written; both are
    stored without a zone. A ``date`` that carries a time of day is not a date.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    # Each distinct text is parsed once: dates repeat (a million dates of birth have a few
    # tens of thousands of values), and pandas' strict parser costs about a microsecond each.
    # (pyarrow's strptime is faster but rolls 31/02 over into March.)
    encoded = pc.dictionary_encode(values)
    distinct = pd.Series(encoded.dictionary.to_numpy(zero_copy_only=False), dtype=object)
    if spec.format is not None:
        fmt = spec.format
    else:
        fmt = _ISO_DATE if spec.dtype == "date" else "ISO8601"
    exact = {} if fmt == "ISO8601" else {"exact": True}  # ISO 8601 is always whole-value
    # coerce: a value that does not parse (or names a day that does not exist) becomes NaT
    # here and a type failure below.
    parsed = pd.to_datetime(distinct, format=fmt, errors="coerce", utc=True, **exact)
    parsed = parsed.dt.tz_localize(None).astype("datetime64[us]")
    if spec.dtype == "date":
        parsed = parsed.where(parsed == parsed.dt.normalize())
    lookup = np.append(parsed.to_numpy(dtype="datetime64[us]"), np.datetime64("NaT", "us"))
    indices = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    dates = lookup[indices]  # -1, a missing value, picks the NaT appended last
    bad = (indices >= 0) & np.isnat(dates)
    return pd.Series(dates, dtype="datetime64[us]"), bad


def parse_fileset(files: Mapping[str, bytes], schema: DatasetSchema) -> ParsedBatch:
    """Parse every member of a raw fileset into one typed frame.

    Args:
        files: Member name to the raw bytes (verified by the store).
        schema: The declared schema.

    Returns:
        The parsed batch; check ``problems`` before using the frame.
    """
    import pandas as pd
    import pyarrow as pa

    batch = ParsedBatch(frame=pd.DataFrame())
    tables = []
    for member, data in files.items():
        table = _read_member(member, data, schema, batch)
        if table is not None:
            tables.append(
                table.append_column(
                    RESERVED_SPLIT_COLUMN, pa.array([member] * table.num_rows, pa.string())
                )
            )
    if not tables:
        if not batch.problems:
            batch.problems.append("the fileset has no files")
        return batch
    _type(batch, pa.concat_tables(tables), schema)
    if len(batch.frame) == 0:
        batch.problems.append(f"the fileset has no data rows (expected {schema.name} rows)")
    return batch


def member_problem(
    member: str,
    schema: DatasetSchema,
    *,
    has_data: bool,
    rows: int,
    first_rejected: RejectedLine | None,
) -> str | None:
    """What is wrong with a member read in chunks, judged once all of them are read.

    Args:
        member: The member.
        schema: The declared schema.
        has_data: Whether any chunk held more than whitespace.
        rows: Lines that split into the declared fields, over all chunks.
        first_rejected: The member's first line with the wrong number of fields, if any.

    Returns:
        The problem `parse_fileset` reports for the same whole file, or None.
    """
    if not has_data:
        return f"file {member!r} is empty: expected {schema.name} rows, found no data"
    if rows == 0 and first_rejected is not None:
        return (
            f"file {member!r}: no line has the declared {len(schema.column_names)} fields "
            f"({first_rejected.reason} on line {first_rejected.line}); wrong delimiter or "
            "format?"
        )
    return None


def parse_chunk(
    member: str, data: bytes, schema: DatasetSchema, *, first: bool, byte_offset: int = 0
) -> ParsedBatch:
    """Parse one chunk of a member's lines (the header first, when the schema has one).

    Like `parse_fileset` on that one file, except that a chunk with no data, or whose every
    line has the wrong number of fields, is no problem of its own: `streaming` decides that
    over the whole member. Line numbers are the chunk's (header = line 1).

    Args:
        member: The member the chunk comes from.
        data: The header line and whole lines of the member.
        schema: The declared schema.
        first: Whether this is the member's first chunk (binary data is looked for in the
            first 64 KiB of the member, as for a whole file).
        byte_offset: Where ``data`` would start in the member (for an encoding error).

    Returns:
        The parsed chunk; check ``problems`` before using the frame.
    """
    import pandas as pd
    import pyarrow as pa

    batch = ParsedBatch(frame=pd.DataFrame())
    table = _read_member(
        member, data, schema, batch, whole=False, first=first, byte_offset=byte_offset
    )
    if table is not None:  # typed even when empty: a chunk of bad lines has the columns too
        member_column = pa.array([member] * table.num_rows, pa.string())
        _type(batch, table.append_column(RESERVED_SPLIT_COLUMN, member_column), schema)
    return batch


def _type(batch: ParsedBatch, table: "pa.Table", schema: DatasetSchema) -> None:
    """Convert the read strings to the declared types, into ``batch``."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    columns: dict[str, Any] = {}
    texts: dict[str, Any] = {}
    for spec in schema.columns:
        if spec.role == "ignore":
            continue  # counted as a field, never read
        cleaned = _clean(table.column(spec.name), spec, schema.missing_values)
        texts[spec.name] = cleaned
        series, bad = _convert(cleaned, spec)
        columns[spec.name] = series
        if bad.any():
            batch.type_failures[spec.name] = bad
            if spec.role in ("personal", "identifier"):
                batch.type_examples[spec.name] = [WITHHELD]
                continue
            text = cleaned.to_numpy(zero_copy_only=False)
            batch.type_examples[spec.name] = [str(v)[:_EXAMPLE_CHARS] for v in text[bad][:5]]
    columns[RESERVED_SPLIT_COLUMN] = pd.Series(
        np.asarray(table.column(RESERVED_SPLIT_COLUMN).to_numpy(zero_copy_only=False)),
        dtype="string",
    )
    texts[RESERVED_SPLIT_COLUMN] = table.column(RESERVED_SPLIT_COLUMN)
    batch.text = pa.table(texts)
    batch.frame = pd.DataFrame(columns)
