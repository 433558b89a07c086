"""A raw fileset parsed and validated a chunk of lines at a time: memory bounded by the chunk.

Each member is read from the store as a stream (`SnapshotStore.iter_bytes`, verified when it
ends) and cut at line ends into chunks of about the source's ``chunk_bytes`` (32 MiB unless
the spec says otherwise); each chunk (the header line
first, when the schema has one) is parsed and pandera-validated exactly as a whole file is
(`parsing.parse_chunk`, `schema.validate_batch`), so a row gets the same verdict and reason
whichever chunk it falls in. What only the whole fileset can decide is decided over all chunks
in `FilesetStream.report`: a member with no data or no well-formed line, a fileset with no
rows, a column failing one check in every row (schema drift). Line numbers in problems and in
the quarantine are the member's.

Nothing made from a chunk may be stored or used before the stream is exhausted: only then are
the members' digests verified (a mismatch raises from the iteration), and only then is the
report final.
"""

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from secure_pipeline.spec import DatasetSchema
from secure_pipeline.spec.data import DEFAULT_CHUNK_BYTES
from secure_pipeline.validation.parsing import (
    WITHHELD,
    ParsedBatch,
    RejectedLine,
    first_line,
    member_problem,
    parse_chunk,
)
from secure_pipeline.validation.schema import SchemaReport, all_rows_failing, validate_batch

_EXAMPLES = 3


@dataclass
class StreamReport:
    """The verdict on a whole fileset, merged from its chunks.

    Attributes:
        rows: Data lines seen (parsed rows plus lines with the wrong number of fields).
        parsed_rows: Lines that split into the declared fields.
        rejected_rows: Rows that go to quarantine, unparseable lines included.
        unparseable_lines: Lines with the wrong number of fields.
        structural: Problems that fail the whole batch (each once).
        failures: Column to check name to the number of failing values.
        examples: Column to a few failing values, as text.
        comment_lines: Comment lines dropped, by member.
        chunks: Chunks parsed.
    """

    rows: int = 0
    parsed_rows: int = 0
    rejected_rows: int = 0
    unparseable_lines: int = 0
    structural: list[str] = field(default_factory=list)
    failures: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    comment_lines: dict[str, int] = field(default_factory=dict)
    chunks: int = 0

    @property
    def reject_rate(self) -> float:
        """Share of data lines rejected."""
        return self.rejected_rows / self.rows if self.rows else 1.0

    def _problem(self, problem: str) -> None:
        if problem not in self.structural:
            self.structural.append(problem)

    def _merge(self, batch: ParsedBatch, report: SchemaReport) -> None:
        self.chunks += 1
        self.rows += report.rows
        self.parsed_rows += len(batch.frame)
        self.rejected_rows += report.rejected_rows
        self.unparseable_lines += len(report.rejected_lines)
        for problem in report.structural:
            self._problem(problem)
        for column, checks in report.failures.items():
            counts = self.failures.setdefault(column, {})
            for check, count in checks.items():
                counts[check] = counts.get(check, 0) + count
        for column, values in report.examples.items():
            kept = self.examples.setdefault(column, [])
            for value in values:
                if len(kept) < _EXAMPLES and not (value == WITHHELD and WITHHELD in kept):
                    kept.append(value)


def line_chunks(stream: Iterable[bytes], chunk_bytes: int) -> Iterator[tuple[bytes, int]]:
    r"""Cut a byte stream at line ends outside quotes into pieces of about ``chunk_bytes``.

    A cut is never made inside a quoted field (after an odd number of ``"``): the reader of
    each piece then sees every quote as the reader of the whole file does, so a quote left open
    takes the same lines into its field (and fails the same way) whatever the chunk size. Line
    ends are ``\n``, or ``\r`` in a stream that has no ``\n`` (old Mac files).

    Args:
        stream: The member's bytes, in any chunks.
        chunk_bytes: The size a piece reaches before it is cut at its last line end (a line,
            or a quoted field, longer than that stays whole).

    Yields:
        Each piece (whole lines; the last may lack its line end) and its offset in the member.
    """
    pending = bytearray()
    offset = 0
    for block in stream:
        pending += block
        while len(pending) >= chunk_bytes:
            cut = _cut(pending, chunk_bytes)
            if cut == 0:
                break  # no line end outside quotes yet: read on
            piece = bytes(pending[:cut])
            del pending[:cut]
            yield piece, offset
            offset += len(piece)
    if pending:
        yield bytes(pending), offset


def _cut(pending: bytearray, chunk_bytes: int) -> int:
    """Where to cut: after the last line end outside quotes within ``chunk_bytes``.

    Else after the first one beyond it; 0 when there is none yet.
    """
    end = b"\n" if b"\n" in pending else b"\r"
    if b'"' not in pending:
        return pending.rfind(end, 0, chunk_bytes) + 1 or pending.find(end, chunk_bytes) + 1
    import numpy as np

    data = np.frombuffer(pending, dtype=np.uint8)
    # Parity of the quotes up to each byte (uint8 wraps, which keeps the parity).
    quoted = np.cumsum(data == ord('"'), dtype=np.uint8) & 1
    ends = np.flatnonzero((data == ord(end)) & (quoted == 0))
    del data, quoted  # release the buffer: the caller resizes it
    if not len(ends):
        return 0
    within = ends[ends < chunk_bytes]
    return int((within[-1] if len(within) else ends[0]) + 1)


def _header_line(piece: bytes) -> bytes:
    """The first line of a member (as the parser takes it), with its line end."""
    text = piece.lstrip(b"\r\n")
    line = first_line(text)
    end = text[len(line) : len(line) + 2]
    return line + (b"\r\n" if end == b"\r\n" else end[:1] or b"\n")


class FilesetStream:
    """Parse and validate a fileset chunk by chunk; iterate it once, then read ``report``.

    Iterating yields ``(batch, report)`` for every chunk that has parsed rows or unparseable
    lines (the chunk's own `SchemaReport`, line numbers the member's). A member whose chunk has
    a file-level problem (not UTF-8, a wrong header) is read to its end without parsing, so
    its digest is still verified, and the problem is in ``report.structural``.

    Args:
        members: Member name to a function opening its byte stream (verified at its end).
        schema: The declared schema.
        chunk_bytes: About how many bytes of CSV each chunk holds.
    """

    def __init__(
        self,
        members: Mapping[str, Callable[[], Iterable[bytes]]],
        schema: DatasetSchema,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        """Prepare the stream; nothing is read before iteration."""
        self.members = members
        self.schema = schema
        self.chunk_bytes = chunk_bytes
        self.report = StreamReport()
        self._done = False

    def __iter__(self) -> Iterator[tuple[ParsedBatch, SchemaReport]]:
        """Each chunk's parse and verdict, in member and line order."""
        if self._done:
            raise RuntimeError("a FilesetStream is read once")
        self._done = True
        report, schema = self.report, self.schema
        if not self.members:
            report._problem("the fileset has no files")
        for member, opener in self.members.items():
            yield from self._member(member, opener())
        if not report.structural:
            if report.parsed_rows == 0:
                report._problem(f"the fileset has no data rows (expected {schema.name} rows)")
            for problem in all_rows_failing(report.failures, report.parsed_rows, schema):
                report._problem(problem)

    def _member(
        self, member: str, stream: Iterable[bytes]
    ) -> Iterator[tuple[ParsedBatch, SchemaReport]]:
        schema, report = self.schema, self.report
        header = b""
        lines_before = 0  # data lines of the member in earlier chunks (blank lines uncounted)
        parsed, has_lines, has_text = 0, False, False
        problems: list[str] = []  # the member's; an all-whitespace member is only "empty"
        first_rejected: RejectedLine | None = None
        for piece, offset in line_chunks(stream, self.chunk_bytes):
            has_text = has_text or bool(piece.strip())
            if problems:
                continue  # read on, unparsed: the member's digest is checked at its end
            first = not has_lines
            has_lines = has_lines or bool(piece.strip(b"\r\n"))
            if not has_lines:
                continue  # blank lines before any line are no rows
            data, at = piece, offset
            if not first:  # the header line first, as the reader of the whole file has it
                data, at = header + piece, offset - len(header)
            elif schema.has_header:
                header = _header_line(piece)
            batch = parse_chunk(member, data, schema, first=first, byte_offset=at)
            comments = batch.comment_lines.get(member, 0)
            report.comment_lines[member] = report.comment_lines.get(member, 0) + comments
            if batch.problems:
                problems.extend(batch.problems)
                continue
            if lines_before:
                batch.rejected_lines = [
                    dataclasses.replace(r, line=r.line + lines_before) if r.line >= 0 else r
                    for r in batch.rejected_lines
                ]
            first_rejected = first_rejected or next(iter(batch.rejected_lines), None)
            lines_before += len(batch.frame) + len(batch.rejected_lines) + comments
            parsed += len(batch.frame)
            if not len(batch.frame) and not batch.rejected_lines:
                continue
            chunk = validate_batch(batch, schema, whole=False)
            report._merge(batch, chunk)
            yield batch, chunk
        if not has_text:
            problems = []  # whitespace only: empty, as the whole file is judged
        if not problems:
            problem = member_problem(
                member, schema, has_data=has_text, rows=parsed, first_rejected=first_rejected
            )
            problems = [problem] if problem else []
        for problem in problems:
            report._problem(problem)


def count_splits(splits: Any, counts: Counter[str]) -> None:
    """Add a chunk's rows per split (file) to ``counts``."""
    for name, count in splits.value_counts().items():
        counts[str(name)] += int(count)
