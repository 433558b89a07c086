"""The S3 landing zone: find complete batches of source files, each exactly once.

A landing zone is an ``s3://bucket/prefix/`` under which each delivery is a *batch*: a folder
holding the source's files at their declared paths (``prefix/2026-11-26/adult.data`` and
``prefix/2026-11-26/adult.test``). Keys come back from S3 in lexicographic order, and a folder's
keys are contiguous in that order, so one pass from a cursor (the last key handled) sees each
batch whole:

* a complete batch is pinned — each file's version id and ETag, read with one HEAD — and its run
  key is built from those, so the same objects launch one run however often they are seen (a
  replay after a crash yields the same keys, and Dagster launches a run key once);
* an incomplete batch (still uploading) is remembered in the cursor and checked again by HEAD on
  later ticks, until it completes or goes stale;
* a tick stops after a time budget or a number of runs and saves its place; the next tick lists
  only from there, so a zone with 100k objects costs one page per tick once caught up.

Like any cursor on the last key, this needs deliveries to sort after earlier ones: name batch
folders by arrival time (``2026-11-26T0200Z/``). A folder sorting before one already handled, or
a key rewritten after the cursor passed it, is not seen (the production bucket's policy allows
creating objects only). Batch folders do not nest: keys below a batch folder belong to it.
"""

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.redaction import redact_text
from secure_pipeline.spec import SourceFile

# Pending (incomplete) batches remembered at most: each costs HEAD requests every tick.
MAX_PENDING = 50
_PAGE = 1000
# Concurrent HEADs when re-checking pending batches (the S3 client pools 16 connections).
_PIN_THREADS = 16


@dataclass(frozen=True)
class LandedObject:
    """One object of a batch, as pinned when the batch was found complete.

    Attributes:
        member: The source file member it is.
        key: Its S3 key.
        etag: Its ETag.
        version_id: Its version id (None in a bucket without versioning).
    """

    member: str
    key: str
    etag: str
    version_id: str | None

    @property
    def version(self) -> str:
        """The identity of this content: the version id, or the ETag without versioning."""
        return self.version_id or f"etag:{self.etag}"


@dataclass(frozen=True)
class Batch:
    """A complete batch, ready to ingest.

    Attributes:
        folder: The batch folder relative to the landing prefix (ends with ``/``).
        location: ``s3://bucket/prefix/folder/``: the source location for its run.
        objects: Its pinned objects, one per source file.
    """

    folder: str
    location: str
    objects: tuple[LandedObject, ...]

    @property
    def run_key(self) -> str:
        """Stable identity of these exact objects: the same objects, the same run key."""
        pinned = ";".join(f"{o.key}@{o.version}" for o in sorted(self.objects, key=lambda o: o.key))
        return f"landing:{self.folder}:{hashlib.sha256(pinned.encode()).hexdigest()[:32]}"

    def run_config_objects(self) -> dict[str, dict[str, str]]:
        """The pins, as the raw asset's ``objects`` config."""
        return {
            o.member: {"etag": o.etag, **({"version_id": o.version_id} if o.version_id else {})}
            for o in self.objects
        }


@dataclass
class LandingCursor:
    """Where the sensor is: the last key handled, and batches waiting to complete.

    Attributes:
        after: The last key handled; listing resumes after it.
        pending: Incomplete batch folders, with when each was first seen (epoch seconds).
    """

    after: str = ""
    pending: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise for Dagster's sensor cursor."""
        return json.dumps({"after": self.after, "pending": self.pending}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "LandingCursor":
        """Parse a cursor; an absent one starts at the beginning.

        Raises:
            ConfigurationError: When the cursor is not one this module wrote.
        """
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls(
                after=str(data["after"]),
                pending={str(k): float(v) for k, v in data.get("pending", {}).items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigurationError(
                f"the landing-zone sensor cursor is not readable ({exc}); reset it in the UI "
                "(Sensors → the sensor → cursor) to scan the zone from the beginning again"
            ) from None


@dataclass
class ScanResult:
    """What one tick found.

    Attributes:
        batches: Complete batches to launch, oldest key first.
        cursor: The cursor to save.
        listed: Keys listed this tick.
        ignored: Listed keys that are not a source file of a batch.
        stale: Incomplete batches given up on this tick.
        stopped_early: True when the tick ran out of budget before reaching the end.
    """

    batches: list[Batch]
    cursor: LandingCursor
    listed: int = 0
    ignored: int = 0
    stale: list[str] = field(default_factory=list)
    stopped_early: bool = False


def batch_day(folder: str) -> str | None:
    """The day a batch folder is named after (``2026-01-31/``, ``2026-01-31T0200Z/``), if any.

    A partitioned pipeline ingests a batch as the partition of that day.
    """
    import datetime

    name = folder.strip("/")
    if "/" in name or len(name) < 10 or (len(name) > 10 and name[10] != "T"):
        return None
    try:
        return datetime.date.fromisoformat(name[:10]).isoformat()
    except ValueError:
        return None


def parse_landing_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` to ``(bucket, "prefix/")``.

    Raises:
        ConfigurationError: When the URI is not an S3 folder.
    """
    parts = urlsplit(uri)
    prefix = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(
            f"a landing zone must be an s3://bucket/prefix/ URI, found {redact_text(uri)!r}"
        )
    if ".." in prefix.split("/"):
        raise ConfigurationError(
            f"a landing zone prefix must not contain '..', found {redact_text(uri)!r}"
        )
    return parts.netloc, (prefix.rstrip("/") + "/") if prefix else ""


class LandingZone:
    """Scans one landing zone for complete batches of a source's files.

    Args:
        client: A boto3 S3 client.
        uri: ``s3://bucket/prefix/``.
        files: The source's files; a batch must hold each at its path.
    """

    def __init__(self, client: Any, uri: str, files: Sequence[SourceFile]) -> None:
        self.client = client
        self.bucket, self.prefix = parse_landing_uri(uri)
        self.files = tuple(files)

    def _folder(self, key: str) -> str | None:
        """The batch folder of a source file's key, or None for any other key."""
        relative = key[len(self.prefix) :]
        for source_file in self.files:
            if relative.endswith("/" + source_file.path):
                folder = relative[: -len(source_file.path)]
                if folder.strip("/"):
                    return folder
        return None

    def _keys(self, after: str) -> Iterator[tuple[str, bool]]:
        """Keys after ``after``, each with whether it ends a page."""
        token: str | None = None
        while True:
            request: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": self.prefix,
                "MaxKeys": _PAGE,
            }
            if token:
                request["ContinuationToken"] = token
            elif after:
                request["StartAfter"] = after
            page = self.client.list_objects_v2(**request)
            contents = page.get("Contents", [])
            for index, item in enumerate(contents):
                yield item["Key"], index == len(contents) - 1
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def pin(self, folder: str) -> Batch | None:
        """HEAD every file of a batch folder; the pinned batch, or None when one is missing."""
        from botocore.exceptions import ClientError

        objects = []
        for source_file in self.files:
            key = f"{self.prefix}{folder}{source_file.path}"
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 404 or exc.response.get("Error", {}).get("Code") in (
                    "404", "NoSuchKey", "NotFound",
                ):  # fmt: skip
                    return None
                raise
            version = head.get("VersionId")
            objects.append(
                LandedObject(
                    member=source_file.member,
                    key=key,
                    etag=str(head.get("ETag", "")).strip('"'),
                    version_id=None if version in (None, "null") else str(version),
                )
            )
        return Batch(folder, f"s3://{self.bucket}/{self.prefix}{folder}", tuple(objects))

    def _pin_all(self, folders: Sequence[str]) -> list[Batch | None]:
        """`pin` many folders at once, in order.

        Pending batches cost HEADs on every tick; one at a time, 50 of them would each wait a
        round trip.
        """
        if len(folders) <= 1:
            return [self.pin(folder) for folder in folders]
        with ThreadPoolExecutor(max_workers=min(_PIN_THREADS, len(folders))) as pool:
            return list(pool.map(self.pin, folders))

    def scan(
        self,
        cursor: LandingCursor,
        *,
        max_runs: int,
        time_budget: float,
        stale_after: float,
        now: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> ScanResult:
        """One tick: re-check pending batches, then list new keys from the cursor.

        Args:
            cursor: Where the previous tick stopped.
            max_runs: Most complete batches to return.
            time_budget: Seconds of listing after which the tick saves its place (checked
                at page boundaries, so at least one page is listed).
            stale_after: Seconds after which an incomplete batch is given up.
            now: Wall-clock time (epoch seconds) for the pending batches' ages.
            clock: Monotonic clock for the budget.

        Returns:
            The batches to launch and the cursor to save with them.
        """
        now = time.time() if now is None else now
        started = clock()
        result = ScanResult(batches=[], cursor=LandingCursor(cursor.after, dict(cursor.pending)))
        pending = result.cursor.pending

        def add(batch: Batch) -> None:
            if all(b.run_key != batch.run_key for b in result.batches):
                result.batches.append(batch)

        waiting = sorted(pending.items(), key=lambda item: item[1])
        for (folder, first_seen), batch in zip(
            waiting, self._pin_all([f for f, _ in waiting]), strict=True
        ):
            if len(result.batches) >= max_runs:
                break
            if batch is not None:
                add(batch)
                del pending[folder]
            elif now - first_seen > stale_after:
                result.stale.append(folder)
                del pending[folder]

        open_folder: str | None = None  # the folder whose keys are being read
        open_last = ""  # its last key so far
        closed_any = False

        def close() -> bool:
            """Handle the open folder; False when the run budget is spent (leave it open)."""
            nonlocal closed_any
            if open_folder is None:
                return True
            if len(result.batches) >= max_runs:
                return False
            batch = self.pin(open_folder)
            if batch is not None:
                add(batch)
                pending.pop(open_folder, None)
            else:
                pending.setdefault(open_folder, now)
            result.cursor.after = open_last
            closed_any = True
            return True

        # Keys that are no batch's file move the cursor only once a later key is seen: the
        # last keys of the zone may sort after deliveries still to come (a README at the root
        # sorts after "2026-…" folders), and the cursor must not jump past those.
        skipped = ""

        def commit_skipped() -> None:
            if skipped > result.cursor.after:
                result.cursor.after = skipped

        for key, page_end in self._keys(cursor.after):
            result.listed += 1
            if open_folder is not None and key.startswith(self.prefix + open_folder):
                open_last = key  # batch folders do not nest: deeper keys belong to this one
            else:
                if not close():
                    result.stopped_early = True
                    break
                open_folder = self._folder(key)
                if open_folder is None:
                    result.ignored += 1
                    commit_skipped()
                    skipped = key
                else:
                    commit_skipped()
                    open_last = key
            if page_end and clock() - started > time_budget:
                result.stopped_early = True
                commit_skipped()
                if not closed_any:
                    # The whole budget went on one folder's keys: handle it as seen so far
                    # rather than list the same keys again on every tick.
                    close()
                break
        else:
            close()  # the listing ended: the last folder is whole (complete or not yet)
        while len(pending) > MAX_PENDING:
            oldest = min(pending, key=pending.__getitem__)
            result.stale.append(oldest)
            del pending[oldest]
        return result
