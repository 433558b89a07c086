"""The subject index, and the exclusion of erased subjects at entry.

A *data subject* is named by the text of an ``identifier``-role column. Nothing here stores that
text: a subject is known only by its *subject hash*, HMAC-SHA256 (hex) of the stripped
identifier under the pipeline's *subject key*, itself derived from the pipeline's
pseudonymisation key (`secure_pipeline.privacy.pseudonyms.pseudonym_key`), so hashes of two
pipelines cannot be linked and whoever reads the store cannot hash a guessed identifier.

At ingestion every source file streams through `EntryFilter`: a streaming CSV record splitter
(quotes, delimiter, header, comment prefix, CRLF, records split across chunks) that finds every
identifier column, drops the records whose subject is on the pipeline's erasure list and keeps
the 16-byte truncated subject hashes of the others. The raw snapshot stores what passed.

Store layout (``R`` is the digest of the raw fileset index of one ingestion)::

    privacy/<pipeline>/subjects/<h0>/<R>.bin     sorted 16-byte digests whose hex starts h0
    privacy/<pipeline>/ingestions/<R>.json       the catalogue of that ingestion
    privacy/<pipeline>/erasures/<sha256>.json    a DSSE envelope signed by ``privacy``

All three are create-only. `lookup` reads one shard per ingestion (one list, then concurrent
small reads) and binary-searches it. The erasure list is read, and every entry verified, before
a source file is ingested: an entry that does not verify as the privacy identity's refuses the
ingestion (it might be a real erasure whose signature was damaged, or a forged one).
"""

import csv
import hashlib
import hmac
import io
import json
import queue
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from secure_pipeline.canonical import canonical_json, sha256_hex
from secure_pipeline.errors import IntegrityError, SignatureError, UntrustedSourceError
from secure_pipeline.spec import Column, DatasetSchema

if TYPE_CHECKING:
    from secure_pipeline.storage.snapshots import SnapshotStore
    from secure_pipeline.trust.attestations import Attestation
    from secure_pipeline.trust.policy import TrustPolicy
    from secure_pipeline.trust.signers import IdentitySigner

ERASURE_TYPE = "https://secure-pipeline.dev/attestation/erasure/v1"
ERASURE_SUBJECT = "erased-subjects"
INDEX_FORMAT = "secure-pipeline/subject-index/v1"
DIGEST_BYTES = 16
SHARDS = "0123456789abcdef"
# An erasure entry lists its subjects in one envelope, which must stay under the envelope
# limit (256 KiB once base64-encoded); larger requests are split into several entries.
MAX_SUBJECTS_PER_ENTRY = 2000
MAX_REASON_CHARS = 200
# Shard reads are small and S3 answers each in tens of milliseconds: a few at a time hide the
# latency. The S3 client keeps 8 connections by default; more threads would only queue.
READ_THREADS = 8

_DERIVATION = b"secure-pipeline subject index v1"
_HASH = re.compile(r"[0-9a-f]{64}")
_PIPELINE = re.compile(r"[a-z][a-z0-9_]{0,47}")
_SHARD_NAME = re.compile(r"([0-9a-f]{64})\.bin")
_CATALOGUE_NAME = re.compile(r"[0-9a-f]{64}\.json")
# What str.strip() removes from ASCII text: stripping bytes with it gives the same identifier
# as stripping the decoded text, without decoding every value.
_ASCII_SPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
_QUOTE = b'"'
# Appended after a region's last line: a row that is exactly this, starting on that line, shows
# the region ended on a record boundary; inside an open quoted field it is swallowed instead.
_SENTINEL = "\x00secure-pipeline:end-of-region\x00"
_BLOCK = 64  # SHA-256 block size: the HMAC pads
_COMPACT_AT = 64 * 1024 * 1024  # bytes of full digests collected before they are merged


# -- subject hashes ----------------------------------------------------------------------------


def subject_key(pipeline_name: str) -> bytes:
    """The pipeline's subject key: HMAC-SHA256 of a fixed label under its pseudonymisation key.

    A key of its own, so subject hashes never equal the pseudonyms of ``validated_*`` columns.

    Raises:
        ConfigurationError: When the pseudonymisation key is unavailable (see `pseudonym_key`).
    """
    from secure_pipeline.privacy.pseudonyms import pseudonym_key

    return hmac.new(pseudonym_key(pipeline_name), _DERIVATION, hashlib.sha256).digest()


def subject_hash(key: bytes, identifier: str) -> str:
    """The subject hash of an identifier: HMAC-SHA256 hex of its text without surrounding space.

    Args:
        key: The pipeline's subject key (`subject_key`).
        identifier: The identifier as written in the data (or typed by whoever asks).

    Raises:
        ValueError: When the identifier is empty or only whitespace.
    """
    text = identifier.strip()
    if not text:
        raise ValueError(
            "an identifier must hold text: an empty or whitespace-only value names no subject"
        )
    return hmac.new(_check_key(key), _encode(text), hashlib.sha256).hexdigest()


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) < 32:
        raise ValueError("a subject key is 32 or more bytes (from subject_key(pipeline_name))")
    return key


def _encode(text: str) -> bytes:
    # surrogateescape: a byte that is not UTF-8 hashes as itself, as the filter sees it.
    return text.encode("utf-8", "surrogateescape")


def check_subject_hash(value: str) -> str:
    """Return ``value`` if it is a subject hash (64 lowercase hex), else raise ValueError."""
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise ValueError(
            f"expected a subject hash (64 lowercase hex characters), found {str(value)[:80]!r}"
        )
    return value


def _check_pipeline(name: str) -> str:
    if not isinstance(name, str) or not _PIPELINE.fullmatch(name):
        raise ValueError(f"pipeline name {str(name)[:60]!r} is not snake_case")
    return name


# -- the entry filter --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Identifier:
    """Where one identifier column is read, and how its values are cleaned."""

    column: Column
    position: int
    aliases: Mapping[bytes, bytes]


class EntryFilter:
    """Streams a delimited file through, dropping erased subjects' records, indexing the rest.

    Records are split as the parser reads them (`secure_pipeline.validation.parsing`): the
    schema's delimiter, ``"`` quoting with doubled quotes, LF, CRLF or CR line ends, lines
    starting with the comment prefix are comments, empty lines are skipped, and with a header
    the first non-empty line names the columns (an identifier column is found by its header
    name and occurrence). A quoted field may hold delimiters and line breaks. Values are
    cleaned as the parser cleans them (surrounding whitespace, missing-value tokens, the
    column's aliases) before they are hashed; a missing value names no subject.

    A record that spans several lines is also read line by line, as a reader that ends records
    at every line break would: the subjects found either way are indexed, and either makes it
    dropped. A record too short to reach an identifier column (the parser rejects it, and may
    show its text) has every field taken as a possible identifier. Header, comments, blank
    lines and kept records pass through byte for byte; with nothing on the erasure list, the
    chunks themselves pass through unchanged.

    Args:
        schema: The dataset schema; it must have identifier columns.
        key: The pipeline's subject key.
        erased: Subject hashes on the erasure list.
        name: How to name the file in errors (its member).

    Attributes:
        excluded_rows: Records dropped because a subject of theirs is erased.
        rows: Records passed through (header, comments and blank lines not counted).
        received_bytes: Bytes received (before any record was dropped).
    """

    def __init__(
        self,
        schema: DatasetSchema,
        key: bytes,
        erased: frozenset[str] | Iterable[str] = frozenset(),
        *,
        name: str = "source file",
    ) -> None:
        columns = schema.identifier_columns
        if not columns:
            raise ValueError(f"schema {schema.name!r} has no identifier column to filter on")
        if len(schema.delimiter) != 1:
            raise ValueError(f"the delimiter must be one character, found {schema.delimiter!r}")
        padded = _check_key(key).ljust(_BLOCK, b"\x00")
        # HMAC as its two hashes, each started from a precomputed pad state: half the cost of
        # the hmac module's per-value object (the key is at most one block, as HMAC requires).
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))
        self._erased = frozenset(bytes.fromhex(check_subject_hash(h)) for h in erased)
        # Compared with the trimmed value, as the parser does (a token is used as written).
        self._missing_text = frozenset({"", *schema.missing_values})
        self._missing = frozenset(_encode(t) for t in self._missing_text)
        self._comment = _encode(schema.comment_prefix) if schema.comment_prefix else None
        self._delimiter = schema.delimiter
        self._delim = _encode(schema.delimiter)
        self._columns = columns
        self.name = name
        self._identifiers: tuple[_Identifier, ...] | None = None
        if not schema.has_header:
            self._identifiers = tuple(self._identifier(c, schema.columns.index(c)) for c in columns)
        self.excluded_rows = 0
        self.rows = 0
        self.received_bytes = 0
        self._received = hashlib.sha256()
        # Full HMACs of the kept records' subjects, back to back: appending to one buffer is
        # several times cheaper per record than a set of 16-byte slices. From time to time
        # they are merged into ``_compacted`` (distinct 16-byte digests, sorted), which bounds
        # the memory to 16 bytes per subject.
        self._found = bytearray()
        self._compacted = b""
        self._digests: tuple[int, int, set[bytes]] = (-1, -1, set())

    @property
    def received_sha256(self) -> str:
        """SHA-256 (hex) of the bytes received (all of them once the stream has ended)."""
        return self._received.hexdigest()

    @property
    def digests(self) -> set[bytes]:
        """The 16-byte truncated subject hashes of the records passed through."""
        if self._digests[:2] != (len(self._found), len(self._compacted)):
            data = self.sorted_digests()
            found = {data[i : i + DIGEST_BYTES] for i in range(0, len(data), DIGEST_BYTES)}
            self._digests = (len(self._found), len(self._compacted), found)
        return self._digests[2]

    def sorted_digests(self) -> bytes:
        """`digests`, sorted and concatenated (what `write_subject_index` also accepts)."""
        self._compact()
        return self._compacted

    def _compact(self) -> None:
        if self._found:
            found = _unique_sorted(self._found, stride=32)
            self._compacted = _unique_sorted(self._compacted + found, stride=DIGEST_BYTES)
            del self._found[:]

    @staticmethod
    def _identifier(column: Column, position: int) -> _Identifier:
        aliases = {_encode(raw): _encode(canonical) for raw, canonical in column.aliases}
        return _Identifier(column, position, aliases)

    # -- streaming -----------------------------------------------------------------------------

    def filter(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The bytes to store: the input without the erased subjects' records.

        Args:
            chunks: The file's bytes, in chunks of any size (iterated once).

        Yields:
            The bytes to store. With an empty erasure list, the input chunks themselves.

        Raises:
            UntrustedSourceError: When the header lacks an identifier column: the file's
                subjects could not be indexed, so it is not ingested.
        """
        passthrough = not self._erased
        received = _BackgroundHash(self._received)
        tail: list[bytes] = []  # bytes received but not yet split into records
        tail_bytes = 0
        retry_at = 0  # with an open quoted record carried over: wait for this much data
        try:
            for chunk in chunks:
                if not chunk:
                    continue
                if not isinstance(chunk, bytes):
                    chunk = bytes(chunk)
                received.update(chunk)
                self.received_bytes += len(chunk)
                if passthrough:
                    yield chunk  # handed on first: the store hashes it while it is indexed
                tail.append(chunk)
                tail_bytes += len(chunk)
                if tail_bytes < retry_at or (b"\n" not in chunk and b"\r" not in chunk):
                    continue  # no record ended (joining now would copy a long line again)
                buffer = b"".join(tail) if len(tail) > 1 else chunk
                cut = _complete_prefix(buffer)
                if not cut:
                    tail, tail_bytes = [buffer], len(buffer)
                    continue
                kept, carry = self._region(buffer[:cut], final=False)
                rest = carry + buffer[cut:]
                tail, tail_bytes = ([rest] if rest else []), len(rest)
                # A record still open in quotes is parsed again with more data; waiting until
                # the data doubles keeps a never-closed quote linear, not quadratic.
                retry_at = 2 * len(carry) if carry else 0
                if kept and not passthrough:
                    yield kept
            if tail:
                kept, _ = self._region(b"".join(tail), final=True)
                if kept and not passthrough:
                    yield kept
        finally:
            received.close()

    def _region(self, region: bytes, *, final: bool) -> tuple[bytes, bytes]:
        """Index the records of ``region``; return the bytes to keep and an open record's bytes.

        ``region`` ends at a line break (or is the end of the file, when ``final``). Its last
        record may still be open in quotes; then its bytes are returned to be parsed again
        with the data that follows.
        """
        if len(self._found) >= _COMPACT_AT:
            self._compact()
        if _QUOTE not in region:
            # No quotes, so every line is a record: split lines in C, no CSV state machine.
            return self._plain(region), b""
        return self._quoted(region, final)

    def _comment_lines(self, region: bytes, lines: Sequence[bytes] | None = None) -> set[int]:
        """Numbers of the region's lines that start with the comment prefix."""
        prefix = self._comment
        if prefix is None or not (
            region.startswith(prefix) or b"\n" + prefix in region or b"\r" + prefix in region
        ):
            return set()
        lines = region.splitlines() if lines is None else lines
        return {i for i, line in enumerate(lines) if line.startswith(prefix)}

    # -- lines without quotes ------------------------------------------------------------------

    def _plain(self, region: bytes) -> bytes:
        lines = region.splitlines()
        comments = self._comment_lines(region, lines)
        start = 0
        if self._identifiers is None:
            for number, line in enumerate(lines):
                if line and number not in comments:
                    header = next(csv.reader([_decode(line)], delimiter=self._delimiter))
                    self._read_header(header)
                    start = number + 1
                    break
            else:
                return region  # blank lines and comments only, so far
        if len(self._identifiers or ()) == 1:
            drops = self._scan_one(lines, start, comments)
        else:
            drops = self._scan_many(lines, start, comments)
        if not drops:
            return region
        self.excluded_rows += len(drops)
        dropped = set(drops)
        kept = region.splitlines(keepends=True)
        return b"".join(line for i, line in enumerate(kept) if i not in dropped)

    def _scan_one(self, lines: list[bytes], start: int, comments: set[int]) -> list[int]:
        """Index one identifier per line (the common case, kept tight); return dropped lines."""
        assert self._identifiers is not None
        (identifier,) = self._identifiers
        position, aliases = identifier.position, identifier.aliases
        delimiter, limit = self._delim, identifier.position + 1
        missing, erased, found = self._missing, self._erased, self._found
        inner, outer = self._inner.copy, self._outer.copy
        drops: list[int] = []
        rows = 0
        for i in range(start, len(lines)):
            line = lines[i]
            if not line or (comments and i in comments):
                continue
            rows += 1
            fields = line.split(delimiter, limit)
            if len(fields) <= position:
                if self._index(_every_field(line.split(delimiter))):
                    drops.append(i)
                continue
            value = fields[position].strip(_ASCII_SPACE)
            if not value.isascii():
                value = _encode(_decode(value).strip())
            if value in missing:
                continue
            if aliases:
                value = aliases.get(value, value)
            mac = inner()
            mac.update(value)
            final = outer()
            final.update(mac.digest())
            digest = final.digest()
            if erased and digest in erased:
                drops.append(i)
            else:
                found += digest
        self.rows += rows - len(drops)
        return drops

    def _scan_many(self, lines: list[bytes], start: int, comments: set[int]) -> list[int]:
        """Index several identifier columns per line; return the dropped lines."""
        assert self._identifiers is not None
        limit = max(i.position for i in self._identifiers) + 1
        drops: list[int] = []
        rows = 0
        for i in range(start, len(lines)):
            line = lines[i]
            if not line or (comments and i in comments):
                continue
            rows += 1
            fields = line.split(self._delim, limit)
            if len(fields) < limit:
                values = _every_field(line.split(self._delim))
            else:
                values = [(_decode(fields[d.position]), d) for d in self._identifiers]
            if self._index(values):
                drops.append(i)
        self.rows += rows - len(drops)
        return drops

    def _index(self, values: Sequence[tuple[str, _Identifier | None]]) -> bool:
        """Hash the identifier values of one record: True when it is to be dropped.

        The record's digests are kept only when none of its subjects is erased. A value that
        comes with no identifier column is a field of a record too short to reach them.
        """
        digests = []
        for text, ident in values:
            value = text.strip()
            if value in self._missing_text:
                continue
            data = _encode(value)
            if ident is not None and ident.aliases:
                data = ident.aliases.get(data, data)
            mac = self._inner.copy()
            mac.update(data)
            final = self._outer.copy()
            final.update(mac.digest())
            digest = final.digest()
            if digest in self._erased:
                return True
            digests.append(digest)
        self._found += b"".join(digests)
        return False

    # -- regions with quotes -------------------------------------------------------------------

    def _quoted(self, region: bytes, final: bool) -> tuple[bytes, bytes]:
        lines = _Lines(region)
        comments = self._comment_lines(region)
        end_line = "" if final else _SENTINEL + "\n"
        saved = (self._identifiers, self.rows, self.excluded_rows, len(self._found))
        try:
            if comments:
                feed: Any = lines.feed(comments) + ([end_line] if end_line else [])
            else:  # the region decoded once; StringIO splits lines as bytes.splitlines does
                feed = io.StringIO(_decode(region) + end_line, newline="")
            reader = csv.reader(feed, delimiter=self._delimiter, quotechar='"', strict=False)
            drops, consumed = self._records(reader, lines, comments)
        except csv.Error:
            # A field over the csv module's size limit: the same rules, in Python (slower).
            self._identifiers, self.rows, self.excluded_rows, found = saved
            del self._found[found:]
            feed = lines.feed(comments) + ([end_line] if end_line else [])
            drops, consumed = self._records(_PythonReader(feed, self._delimiter), lines, comments)
        if consumed == lines.count and not drops:
            return region, b""
        raw = lines.raw()
        carry = b"".join(raw[consumed:])
        if not drops:
            return region[: len(region) - len(carry)], carry
        return b"".join(line for i, line in enumerate(raw[:consumed]) if i not in drops), carry

    def _records(self, reader: Any, lines: "_Lines", comments: set[int]) -> tuple[set[int], int]:
        """Index the records a reader gives; return the dropped lines and the complete ones.

        The reader's ``line_num`` after a record is the number of lines read, so a record
        covers the lines from the previous record's end to its own.
        """
        total = lines.count
        drops: set[int] = set()
        start = 0  # first line of the record being read
        if self._identifiers is None:
            for row in reader:
                end = reader.line_num
                if end > total:  # the sentinel line was read
                    return drops, (total if row == [_SENTINEL] and start == total else start)
                start = end
                if row:
                    self._read_header(row)
                    break
            else:
                return drops, total
        assert self._identifiers is not None
        identifiers = self._identifiers
        (first,) = identifiers[:1]
        single = len(identifiers) == 1
        position, aliases = first.position, first.aliases
        missing, erased, found = self._missing_text, self._erased, self._found
        inner, outer = self._inner.copy, self._outer.copy
        rows = excluded = 0
        consumed = total
        for row in reader:
            end = reader.line_num
            if end > total:  # the sentinel line was read: did the last record end before it?
                consumed = total if row == [_SENTINEL] and start == total else start
                break
            if not row:  # an empty line, or a comment
                start = end
                continue
            if single and end - start == 1:
                if len(row) > position:
                    value = row[position].strip()
                    if value not in missing:
                        data = value.encode("utf-8", "surrogateescape")
                        if aliases:
                            data = aliases.get(data, data)
                        mac = inner()
                        mac.update(data)
                        final = outer()
                        final.update(mac.digest())
                        digest = final.digest()
                        if erased and digest in erased:
                            drops.add(start)
                            excluded += 1
                            start = end
                            continue
                        found += digest
                    rows += 1
                elif self._index(_every_field(row)):
                    drops.add(start)
                    excluded += 1
                else:
                    rows += 1
            else:
                values = self._values(row)
                if end - start > 1:
                    values += self._line_by_line(lines, start, end, comments)
                if self._index(values):
                    drops.update(range(start, end))
                    excluded += 1
                else:
                    rows += 1
            start = end
        self.rows += rows
        self.excluded_rows += excluded
        return drops, consumed

    def _values(self, fields: Sequence[str]) -> list[tuple[str, _Identifier | None]]:
        """A record's identifier values; every field when it is too short to hold them all."""
        assert self._identifiers is not None
        if len(fields) <= max(d.position for d in self._identifiers):
            return _every_field(fields)
        return [(fields[d.position], d) for d in self._identifiers]

    def _line_by_line(
        self, lines: "_Lines", start: int, end: int, comments: set[int]
    ) -> list[tuple[str, _Identifier | None]]:
        """The identifier values of a multi-line record read as one record per line."""
        values: list[tuple[str, _Identifier | None]] = []
        raw = lines.raw()
        for i in range(start, end):
            if i in comments:
                continue
            text = _decode(raw[i].rstrip(b"\r\n"))
            for fields in _PythonReader([text], self._delimiter):
                values += self._values(fields)
        return values

    # -- header --------------------------------------------------------------------------------

    def _read_header(self, names: list[str]) -> None:
        """Find each identifier column in the header: the n-th occurrence of its header name."""
        located: dict[tuple[str, int], int] = {}
        counts: Counter[str] = Counter()
        for position, header in enumerate(names):
            counts[header] += 1
            located.setdefault((header, counts[header]), position)
        identifiers = []
        for column in self._columns:
            position = located.get((column.header_name, column.occurrence))
            if position is None:
                # The header's names are not quoted: in a file without a header the first line
                # is a record, and may hold personal data.
                raise UntrustedSourceError(
                    f"{self.name}: expected a header naming {column.header_name!r} (occurrence "
                    f"{column.occurrence}), the identifier column {column.name!r}, but its "
                    f"first line ({len(names)} fields) does not. Erasure finds data subjects "
                    "by that column, so the file is not ingested; nothing was stored. Fix the "
                    "file, or the schema if the column was renamed."
                )
            identifiers.append(self._identifier(column, position))
        self._identifiers = tuple(identifiers)


class _Lines:
    """The lines of a region, split only when needed (most regions never need them)."""

    def __init__(self, region: bytes) -> None:
        self._region = region
        self._raw: list[bytes] | None = None
        # What bytes.splitlines would give, counted without building the lines.
        breaks = region.count(b"\n") + region.count(b"\r") - region.count(b"\r\n")
        self.count = breaks + (0 if region.endswith((b"\n", b"\r")) else 1)

    def raw(self) -> list[bytes]:
        """Each line with its line break."""
        if self._raw is None:
            self._raw = self._region.splitlines(keepends=True)
        return self._raw

    def feed(self, comments: set[int]) -> list[str]:
        """The lines as text, each comment line made an empty line (the parser drops them)."""
        return ["\n" if i in comments else _decode(line) for i, line in enumerate(self.raw())]


class _BackgroundHash:
    """Hashes the received chunks on a thread of its own, beside the parsing.

    hashlib releases the GIL on large updates, so the received bytes' digest costs the
    filter (which holds the GIL) almost nothing.
    """

    def __init__(self, target: "hashlib._Hash") -> None:
        self._target = target
        # Bounded: a stalled hash must not hold the whole file in memory.
        self._pending: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, name="entry-filter-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._pending.get()) is not None:
            self._target.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._pending.put(chunk)

    def close(self) -> None:
        """Wait for every chunk handed over to be hashed."""
        self._pending.put(None)
        self._thread.join()


def _every_field(fields: Sequence[str | bytes]) -> list[tuple[str, None]]:
    """Every field of a record too short to reach an identifier column, as a possible one.

    The parser rejects such a record and may show its text, so its subjects must be found
    wherever the identifier ended up.
    """
    return [(_decode(f) if isinstance(f, bytes) else f, None) for f in fields]


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _complete_prefix(buffer: bytes) -> int:
    """Length of the part of ``buffer`` that ends at a line break (0 when none does).

    A trailing CR is not taken as a break: the LF of a CRLF may come next.
    """
    newline = buffer.rfind(b"\n")
    carriage = buffer.rfind(b"\r")
    if carriage == len(buffer) - 1:
        carriage = buffer.rfind(b"\r", 0, carriage)
    return max(newline, carriage) + 1


def _python_records(lines: Sequence[str], delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Split lines into records as the csv module does (non-strict), without its field limit.

    Yields:
        ``(lines read so far, fields)`` per record; an empty line is a record of no fields.
    """
    count, i = len(lines), 0
    while i < count:
        text = lines[i]
        i += 1
        body = len(text.rstrip("\r\n"))
        if body == 0:
            yield i, []
            continue
        fields: list[str] = []
        parts: list[str] = []
        pos, state = 0, "start"
        while True:
            if state == "start":
                if pos < body and text[pos] == '"':
                    pos, state = pos + 1, "quoted"
                else:
                    state = "field"
            elif state == "field":
                stop = text.find(delimiter, pos, body)
                if stop < 0:
                    parts.append(text[pos:body])
                    fields.append("".join(parts))
                    break
                parts.append(text[pos:stop])
                fields.append("".join(parts))
                parts, pos, state = [], stop + 1, "start"
            else:  # inside quotes: delimiters and line breaks are text
                close = text.find('"', pos)
                if close < 0:
                    parts.append(text[pos:])
                    if i >= count:  # the data ends inside the quotes
                        fields.append("".join(parts))
                        break
                    text = lines[i]
                    i += 1
                    body, pos = len(text.rstrip("\r\n")), 0
                elif text.startswith('"', close + 1):
                    parts.append(text[pos : close + 1])
                    pos = close + 2
                else:
                    parts.append(text[pos:close])
                    pos, state = close + 1, "field"
        yield i, fields


class _PythonReader:
    """`_python_records` with the csv reader's interface: iterate rows, read ``line_num``."""

    def __init__(self, lines: Sequence[str], delimiter: str) -> None:
        self._records = _python_records(lines, delimiter)
        self.line_num = 0

    def __iter__(self) -> "_PythonReader":
        return self

    def __next__(self) -> list[str]:
        self.line_num, fields = next(self._records)
        return fields


def _unique_sorted(data: bytes | bytearray | memoryview, *, stride: int) -> bytes:
    """The distinct 16-byte prefixes of ``stride``-byte items, sorted and concatenated."""
    import numpy as np

    if not len(data):
        return b""
    items = np.frombuffer(data, dtype=np.uint8).reshape(-1, stride)[:, :DIGEST_BYTES]
    # As two big-endian 64-bit words, numeric order is the bytes' lexicographic order.
    words = np.ascontiguousarray(items).view([("high", ">u8"), ("low", ">u8")]).ravel()
    return bytes(np.unique(words).tobytes())


# -- the subject index -------------------------------------------------------------------------


def subjects_prefix(pipeline_name: str, shard: str) -> str:
    """Where the shards ``<shard>/<R>.bin`` of every ingestion of a pipeline are."""
    if shard not in SHARDS or len(shard) != 1:
        raise ValueError(f"a shard is one hex digit, found {shard!r}")
    return f"privacy/{_check_pipeline(pipeline_name)}/subjects/{shard}/"


def shard_key(pipeline_name: str, shard: str, raw_index_sha256: str) -> str:
    """Store key of one shard of one ingestion's subject index."""
    from secure_pipeline.storage.snapshots import check_sha256

    return f"{subjects_prefix(pipeline_name, shard)}{check_sha256(raw_index_sha256)}.bin"


def ingestions_prefix(pipeline_name: str) -> str:
    """Where the ingestion catalogues of a pipeline are."""
    return f"privacy/{_check_pipeline(pipeline_name)}/ingestions/"


def catalogue_key(pipeline_name: str, raw_index_sha256: str) -> str:
    """Store key of the catalogue of one ingestion."""
    from secure_pipeline.storage.snapshots import check_sha256

    return f"{ingestions_prefix(pipeline_name)}{check_sha256(raw_index_sha256)}.json"


_RESERVED = ("format", "pipeline", "raw_index_sha256", "shards", "subjects")


def write_subject_index(
    store: "SnapshotStore",
    pipeline_name: str,
    raw_index_sha256: str,
    digests: Iterable[bytes] | bytes,
    catalogue: Mapping[str, Any],
) -> dict[str, Any]:
    """Store the subject index of one ingestion: its 16 shards, then its catalogue.

    Every shard is written, empty ones too, so a missing shard always means a damaged index.
    All are create-only; ingesting the same files again finds the same index (its first
    catalogue stands, as the first manifest of a snapshot does).

    Args:
        store: The snapshot store.
        pipeline_name: The pipeline.
        raw_index_sha256: Digest of the raw fileset index (the raw asset's data version).
        digests: The 16-byte truncated subject hashes of the ingestion: 16-byte items, or
            them concatenated (`EntryFilter.sorted_digests`); duplicates count once.
        catalogue: What the ingestion stored (raw index, members with key ids, time, rows,
            excluded rows...); no personal data. Keys `format`, `pipeline`,
            `raw_index_sha256`, `shards` and `subjects` are set here.

    Returns:
        ``catalogue_key``, ``catalogue_sha256``, ``shards`` (hex digit -> SHA-256 of the shard),
        ``subjects`` (count) and ``created`` (False when the index was there already), for the
        ingestion's audit record.

    Raises:
        ValueError: For a digest that is not 16 bytes, or a reserved catalogue key.
        IntegrityError: When a different index is stored for the same ingestion already.
    """
    reserved = sorted(set(catalogue) & set(_RESERVED))
    if reserved:
        raise ValueError(f"catalogue keys {reserved} are set by write_subject_index")
    if isinstance(digests, bytes | bytearray | memoryview):
        blob = digests
    else:
        items = list(digests)
        wrong = [d for d in items if not isinstance(d, bytes) or len(d) != DIGEST_BYTES]
        if wrong:
            raise ValueError(f"subject digests are {DIGEST_BYTES} bytes, found {wrong[0]!r:.40}")
        blob = b"".join(items)
    if len(blob) % DIGEST_BYTES:
        raise ValueError(f"concatenated subject digests must be a multiple of {DIGEST_BYTES} bytes")
    ordered = _unique_sorted(blob, stride=DIGEST_BYTES)
    count = len(ordered) // DIGEST_BYTES
    # Sorted, so each shard (the first hex digit: the first byte's high half) is one slice.
    bounds = [_first_at_least(ordered, shard << 4) for shard in range(16)] + [count]
    shard_digests: dict[str, str] = {}
    for shard, name in enumerate(SHARDS):
        data = ordered[bounds[shard] * DIGEST_BYTES : bounds[shard + 1] * DIGEST_BYTES]
        shard_digests[name] = sha256_hex(data)
        store.create_object(shard_key(pipeline_name, name, raw_index_sha256), data)
    document = {
        **catalogue,
        "format": INDEX_FORMAT,
        "pipeline": pipeline_name,
        "raw_index_sha256": raw_index_sha256,
        "shards": shard_digests,
        "subjects": count,
    }
    data = canonical_json(document)
    key = catalogue_key(pipeline_name, raw_index_sha256)
    created = store.try_create_object(key, data)
    if not created:
        data = store.read_object(key)
        try:
            stored = json.loads(data)
            same = stored.get("shards") == shard_digests and stored.get("subjects") == count
        except (ValueError, AttributeError):
            same = False
        if not same:
            raise IntegrityError(
                f"the subject index of ingestion {raw_index_sha256} is stored already "
                f"({store.uri(key)}) and lists other subjects than these files hold: it was "
                "changed, or written with another subject key (was the pseudonymisation key "
                "replaced?). Nothing was overwritten; compare it with the ingestion's audit "
                "record before relying on it."
            )
    return {
        "catalogue_key": key,
        "catalogue_sha256": sha256_hex(data),
        "shards": shard_digests,
        "subjects": count,
        "created": created,
    }


@dataclass(frozen=True)
class ShardHit:
    """What one ingestion's shard says about one subject.

    Attributes:
        raw_index_sha256: The ingestion (digest of its raw fileset index).
        key: The shard's store key.
        sha256: Digest of the shard as read (to compare with the ingestion's audit record).
        holds: Whether the shard lists the subject (True, too, when it is malformed: an index
            that cannot be read is taken to hold every subject).
        malformed: Whether its size is not a whole number of digests.
    """

    raw_index_sha256: str
    key: str
    sha256: str
    holds: bool
    malformed: bool = False


def scan_subject(
    store: "SnapshotStore", pipeline_name: str, subject_hash: str
) -> dict[str, ShardHit]:
    """Read the shard of ``subject_hash`` of every ingestion: raw index digest -> what it says.

    One listing of the shard's prefix, then the shards read concurrently (S3 latency) and each
    binary-searched. Objects under the prefix that are not named ``<sha256>.bin`` are skipped.
    """
    from concurrent.futures import ThreadPoolExecutor

    target = bytes.fromhex(check_subject_hash(subject_hash))[:DIGEST_BYTES]
    prefix = subjects_prefix(pipeline_name, subject_hash[0])
    found: list[tuple[str, str]] = []
    for key in store.list_keys(prefix):
        match = _SHARD_NAME.fullmatch(key[len(prefix) :])
        if match:
            found.append((match.group(1), key))

    def read(item: tuple[str, str]) -> ShardHit | None:
        raw_index, key = item
        try:
            data = store.read_object(key)
        except FileNotFoundError:
            return None  # removed since the listing: the caller sees the ingestion has none
        malformed = len(data) % DIGEST_BYTES != 0
        holds = malformed or _contains(data, target)
        return ShardHit(raw_index, key, sha256_hex(data), holds, malformed)

    with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="subject-index") as pool:
        hits = list(pool.map(read, found))
    return {hit.raw_index_sha256: hit for hit in hits if hit is not None}


def _first_at_least(data: bytes, first_byte: int) -> int:
    """Index of the first sorted digest whose first byte is at least ``first_byte``."""
    low, high = 0, len(data) // DIGEST_BYTES
    while low < high:
        middle = (low + high) // 2
        if data[middle * DIGEST_BYTES] < first_byte:
            low = middle + 1
        else:
            high = middle
    return low


def _contains(data: bytes, target: bytes) -> bool:
    """Binary search of sorted concatenated 16-byte digests."""
    low, high = 0, len(data) // DIGEST_BYTES
    while low < high:
        middle = (low + high) // 2
        probe = data[middle * DIGEST_BYTES : (middle + 1) * DIGEST_BYTES]
        if probe == target:
            return True
        if probe < target:
            low = middle + 1
        else:
            high = middle
    return False


def lookup(store: "SnapshotStore", pipeline_name: str, subject_hash: str) -> list[str]:
    """The ingestions (raw index digests, sorted) whose subject index holds ``subject_hash``.

    A malformed shard counts as holding it. Whether each shard is the one the ingestion's
    signed audit record names is for the caller to check (`scan_subject` gives the digests);
    an ingestion with no shard at all is not listed here.
    """
    hits = scan_subject(store, pipeline_name, subject_hash)
    return sorted(raw_index for raw_index, hit in hits.items() if hit.holds)


def ingestions(store: "SnapshotStore", pipeline_name: str) -> list[dict[str, Any]]:
    """The catalogues of every indexed ingestion of a pipeline, oldest first.

    Each is the stored document plus ``catalogue_key`` and ``catalogue_sha256`` (of the bytes
    read, to compare with the audit record). A catalogue that is not a JSON object is listed
    with only those two, ``raw_index_sha256`` from its name and ``problem``, so the caller can
    treat that ingestion as holding every subject.
    """
    from concurrent.futures import ThreadPoolExecutor

    prefix = ingestions_prefix(pipeline_name)
    keys = [k for k in store.list_keys(prefix) if _CATALOGUE_NAME.fullmatch(k[len(prefix) :])]

    def read(key: str) -> dict[str, Any] | None:
        try:
            data = store.read_object(key)
        except FileNotFoundError:
            return None
        meta = {"catalogue_key": key, "catalogue_sha256": sha256_hex(data)}
        try:
            document = json.loads(data)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            name = key[len(prefix) : -len(".json")]
            return {**meta, "raw_index_sha256": name, "problem": "not a JSON catalogue"}
        return {**document, **meta}

    with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="subject-index") as pool:
        found = [c for c in pool.map(read, keys) if c is not None]
    return sorted(found, key=lambda c: (str(c.get("created_at", "")), c["catalogue_key"]))


# -- the erasure list --------------------------------------------------------------------------


def erasures_prefix(pipeline_name: str) -> str:
    """Where the erasure list entries of a pipeline are."""
    return f"privacy/{_check_pipeline(pipeline_name)}/erasures/"


def erasure_key(pipeline_name: str, envelope: bytes) -> str:
    """Store key of an erasure list entry: ``privacy/<pipeline>/erasures/<sha256>.json``."""
    return f"{erasures_prefix(pipeline_name)}{sha256_hex(envelope)}.json"


def _subjects_digest(subjects: Sequence[str]) -> str:
    return sha256_hex(canonical_json(list(subjects)))


def erasure_statement(
    pipeline_name: str, subject_hashes: Iterable[str], requested_at: str, reason: str
) -> dict[str, Any]:
    """The in-toto statement of one erasure request (to be signed by the privacy identity).

    Its in-toto subject is the digest of the sorted subject hashes, so the statement is bound
    to exactly that list; the predicate is ``{pipeline, subjects, requested_at, reason}``.

    Args:
        pipeline_name: The pipeline.
        subject_hashes: The subjects' hashes (never the identifiers).
        requested_at: When the request was made (ISO 8601 UTC).
        reason: Why (a request reference, a legal ground); never personal data.

    Raises:
        ValueError: For no subjects or more than `MAX_SUBJECTS_PER_ENTRY`, a malformed hash,
            an unreadable time or a reason over `MAX_REASON_CHARS` characters.
    """
    from datetime import datetime

    from secure_pipeline.trust.attestations import statement

    subjects = sorted({check_subject_hash(h) for h in subject_hashes})
    if not subjects or len(subjects) > MAX_SUBJECTS_PER_ENTRY:
        raise ValueError(
            f"an erasure entry names 1 to {MAX_SUBJECTS_PER_ENTRY} subjects, found "
            f"{len(subjects)}; split a larger request into several entries"
        )
    try:
        datetime.fromisoformat(requested_at.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise ValueError(f"requested_at must be ISO 8601, found {requested_at!r}") from None
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"the reason is text of at most {MAX_REASON_CHARS} characters")
    return statement(
        {ERASURE_SUBJECT: _subjects_digest(subjects)},
        ERASURE_TYPE,
        {
            "pipeline": _check_pipeline(pipeline_name),
            "subjects": subjects,
            "requested_at": requested_at,
            "reason": reason,
        },
    )


def write_erasure_entry(
    store: "SnapshotStore",
    pipeline_name: str,
    subject_hashes: Iterable[str],
    *,
    requested_at: str,
    reason: str,
    signer: "IdentitySigner",
) -> str:
    """Sign an erasure request as the privacy identity and add it to the list, create-only.

    Returns:
        The entry's store key.

    Raises:
        PermissionError: When ``signer`` is not the privacy identity (ingestion would refuse
            the entry).
        ValueError: See `erasure_statement`.
    """
    from secure_pipeline.trust.attestations import sign
    from secure_pipeline.trust.identities import PRIVACY

    if signer.identity != PRIVACY:
        raise PermissionError(
            f"erasure entries are signed by the {PRIVACY} identity; {signer.identity} may not "
            "write one (ingestion would refuse it)"
        )
    envelope = sign(erasure_statement(pipeline_name, subject_hashes, requested_at, reason), signer)
    key = erasure_key(pipeline_name, envelope)
    store.create_object(key, envelope)
    return key


def erasure_entries(
    store: "SnapshotStore", pipeline_name: str, trust: "TrustPolicy"
) -> list["Attestation"]:
    """Every entry of a pipeline's erasure list, verified, oldest request first.

    Raises:
        SignatureError: Naming the first entry that is not a DSSE envelope signed by a key the
            trust policy gives to the privacy identity, is of another type, names another
            pipeline, or whose subjects are malformed or do not match its in-toto subject.
    """
    from concurrent.futures import ThreadPoolExecutor

    from secure_pipeline.trust.attestations import open_envelope
    from secure_pipeline.trust.identities import PRIVACY

    keys = list(store.list_keys(erasures_prefix(pipeline_name)))

    def read(key: str) -> tuple[str, bytes] | None:
        try:
            return key, store.read_object(key)
        except FileNotFoundError:
            return None

    with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="erasures") as pool:
        stored = [item for item in pool.map(read, keys) if item is not None]
    entries = []
    for key, data in stored:
        what = f"erasure list entry {store.uri(key)}"
        entry = open_envelope(
            data, trust, identities=(PRIVACY,), predicate_type=ERASURE_TYPE, what=what
        )
        predicate = entry.predicate
        subjects = predicate.get("subjects")
        problem = None
        if predicate.get("pipeline") != pipeline_name:
            problem = f"is for pipeline {predicate.get('pipeline')!r}, not {pipeline_name!r}"
        elif (
            not isinstance(subjects, list)
            or not subjects
            or not all(isinstance(s, str) and _HASH.fullmatch(s) for s in subjects)
        ):
            problem = "does not list subject hashes"
        elif entry.subjects != {ERASURE_SUBJECT: _subjects_digest(sorted(set(subjects)))}:
            problem = "lists other subjects than it is signed for"
        if problem:
            raise SignatureError(
                f"{what} is signed by the {PRIVACY} identity but {problem}; ingestion refuses "
                "an erasure list it cannot apply. Investigate the entry (the audit trail has "
                "the privacy.erasure receipt of each request) before ingesting."
            )
        entries.append(entry)
    return sorted(entries, key=lambda e: (str(e.predicate.get("requested_at")), e.sha256))


def erased_subjects(
    store: "SnapshotStore", pipeline_name: str, trust: "TrustPolicy"
) -> frozenset[str]:
    """The subject hashes on a pipeline's erasure list, every entry verified.

    Raises:
        SignatureError: When an entry does not verify (see `erasure_entries`); the ingestion
            that asked is refused rather than run without it.
    """
    entries = erasure_entries(store, pipeline_name, trust)
    return frozenset(s for entry in entries for s in entry.predicate["subjects"])
