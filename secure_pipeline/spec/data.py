"""What the data is: its columns and where its files come from."""

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

# The column ingestion adds to name the file member a row came from.
RESERVED_SPLIT_COLUMN = "split"
# About 32 MiB of CSV per validation chunk: some 300,000 rows of a dozen columns, ≈0.4 GB of
# parse and pandera working memory; large enough for pyarrow's threaded reader and pandera's
# vectorised checks to run at full speed.
DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024

ColumnType = Literal["int", "float", "string", "category", "bool", "date", "datetime"]
ColumnRole = Literal["feature", "label", "sensitive", "identifier", "personal", "ignore"]
# Roles whose values never reach `validated_*` (unless a personal column is pseudonymised).
DROPPED_AT_ENTRY: tuple[str, ...] = ("personal", "ignore")


@dataclass(frozen=True)
class Column:
    """One column the data must have.

    Attributes:
        name: Column name after parsing (snake_case).
        dtype: Logical type: ``int``, ``float``, ``string``, ``category``, ``bool``, ``date``
            or ``datetime``.
        nullable: Whether missing values are allowed.
        allowed: For categories: the complete set of allowed values.
        minimum: Smallest allowed value (numeric columns).
        maximum: Largest allowed value (numeric columns).
        description: What the column means.
        aliases: Raw spellings mapped to their canonical value before validation, e.g. the
            Adult test file's ``<=50K.`` for ``<=50K``. Listed explicitly so that nothing is
            normalised by accident.
        max_null_fraction: Largest share of missing values a batch may have (a statistical
            expectation; per-row nullability is ``nullable``).
        mean_between: Range the batch mean of a numeric column must fall in.
        role: What the column is for. ``feature`` (the default: a model input when its type
            allows), ``label`` (the target; same as naming it the schema's ``label``),
            ``sensitive`` (a protected attribute: audited for fairness, same as listing it in
            the pipeline's ``sensitive_features``), ``identifier`` (kept for joins and erasure,
            never a model input), ``personal`` (a direct identifier such as a name: checked
            while parsing, then dropped before ``validated_*`` unless ``pseudonymise``) or
            ``ignore`` (its presence in the header is checked; its values are dropped at entry,
            unread).
        source: The column's name in the file header when it differs from ``name`` (awkward
            or duplicated header names). Header files only.
        occurrence: Which occurrence of ``source`` this is when the header repeats a name
            (1 for the first).
        pseudonymise: For a ``personal`` column the pipeline needs (for joins): keep it as a
            keyed hash (HMAC-SHA256 with the pipeline's pseudonymisation key), never the value.
        format: How ``date``/``datetime`` values are written, as a ``strptime`` format
            (``%d/%m/%Y``); unset means ISO 8601 (``2013-08-14``, ``2013-08-14 06:03:42``).
        earliest: Earliest allowed ``date``/``datetime``, in ISO 8601.
        latest: Latest allowed ``date``/``datetime``, in ISO 8601.
        min_length: Fewest characters a ``string`` value may have.
        max_length: Most characters a ``string`` value may have.
        pattern: Regular expression every ``string`` value must match in full.
    """

    name: str
    dtype: ColumnType
    nullable: bool = False
    allowed: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    description: str = ""
    aliases: tuple[tuple[str, str], ...] = ()
    max_null_fraction: float | None = None
    mean_between: tuple[float, float] | None = None
    role: ColumnRole = "feature"
    source: str | None = None
    occurrence: int = 1
    pseudonymise: bool = False
    format: str | None = None
    earliest: str | None = None
    latest: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None

    @property
    def header_name(self) -> str:
        """The name the file header gives this column."""
        return self.source if self.source is not None else self.name

    @property
    def kept(self) -> bool:
        """Whether the column reaches ``validated_*`` (personal ones only as keyed hashes)."""
        return self.role != "ignore" and (self.role != "personal" or self.pseudonymise)


@dataclass(frozen=True)
class DatasetSchema:
    """The columns of a dataset, in file order, and how its files are written.

    Attributes:
        name: Schema name, recorded in provenance.
        columns: Columns in the order they appear in a header-less file.
        label: The target column, if the data is labelled.
        positive_label: The label value encoded as 1 in the features.
        missing_values: Tokens that mean "missing" in the raw files (Adult uses ``?``).
        delimiter: Field separator of the raw files.
        has_header: Whether each file starts with a header row naming the columns; the names
            must then match the columns' header names exactly (any order; a repeated name
            once per declared ``occurrence``).
        comment_prefix: Lines starting with this are comments (the Adult test file's first
            line), dropped before parsing and counted.
        min_rows: Fewest rows a batch may have.
        max_rows: Most rows a batch may have.
    """

    name: str
    columns: tuple[Column, ...]
    label: str | None = None
    positive_label: str | None = None
    missing_values: tuple[str, ...] = ()
    delimiter: str = ","
    has_header: bool = False
    comment_prefix: str | None = None
    min_rows: int = 1
    max_rows: int | None = None

    def __post_init__(self) -> None:
        # A column marked as the label names the label when the schema does not: both
        # spellings mean the same, and the pipeline spec checks that they agree.
        marked = [c.name for c in self.columns if c.role == "label"]
        if self.label is None and len(marked) == 1:
            object.__setattr__(self, "label", marked[0])

    @property
    def column_names(self) -> tuple[str, ...]:
        """Names of the columns, in order."""
        return tuple(c.name for c in self.columns)

    @property
    def kept_columns(self) -> tuple[Column, ...]:
        """The columns ``validated_*`` holds, in order.

        ``ignore`` columns and ``personal`` ones not pseudonymised are dropped at entry.
        """
        return tuple(c for c in self.columns if c.kept)

    @property
    def identifier_columns(self) -> tuple[Column, ...]:
        """The ``identifier`` columns: what the subject index and erasure key on."""
        return tuple(c for c in self.columns if c.role == "identifier")

    @property
    def holds_personal_data(self) -> bool:
        """Whether rows can be tied to a person: some column is ``identifier`` or ``personal``.

        Every row-level snapshot of such data (raw files, validated rows, quarantine, features)
        is envelope-encrypted, so that erasure can crypto-shred it under immutable storage.
        """
        return any(c.role in ("identifier", "personal") for c in self.columns)

    @property
    def kept_names(self) -> tuple[str, ...]:
        """Names of `kept_columns`."""
        return tuple(c.name for c in self.kept_columns)

    @property
    def version(self) -> str:
        """A fingerprint of the whole schema: any change to it gives a new version."""
        digest = hashlib.sha256(
            json.dumps(asdict(self), sort_keys=True, default=list).encode()
        ).hexdigest()
        return f"{self.name}@{digest[:12]}"


@dataclass(frozen=True)
class SourceFile:
    """One file of a source.

    Attributes:
        member: Logical name of the file within the source (``train``, ``test``).
        path: Path of the file relative to the source location.
    """

    member: str
    path: str


# Where a partitioned source's location or file paths name the day: ``2026-01-31``.
PARTITION_PLACEHOLDER = "{date}"


@dataclass(frozen=True)
class SourcePartitions:
    """Daily partitions of a source: one batch of files per day.

    Raw, validated and features become partitioned assets: every day is ingested, validated,
    judged and stored on its own (its snapshots under its own partition key), so a backfill of
    N days is N independent runs, and a run's memory is one day's. The day is written into the
    location or the file paths with ``{date}``.

    Attributes:
        start: The first day, in ISO 8601 (``2026-01-01``).
        end: The day after the last one, when the source ends; open-ended otherwise (a new day
            every midnight, UTC).
        window: How many consecutive days, ending with the latest one ingested, the model is
            trained on.
    """

    start: str
    end: str | None = None
    window: int = 30


@dataclass(frozen=True)
class SourceSpec:
    """Where a dataset comes from.

    The location is a directory-like URI (``file://``, ``https://``, ``s3://``); each file's
    path is resolved against it. At run time the variable ``location_env_var``, when set,
    replaces ``location``, so a deployment points the same pipeline at its own data.

    Attributes:
        name: Source name; the raw asset is ``raw_<name>``.
        files: The files to ingest.
        location: Default location of the files.
        location_env_var: Variable that overrides ``location`` (required in production).
        format: Format of the files, recorded in manifests and used as key extension.
        max_bytes: Largest accepted file; a larger one is refused before it is stored.
        chunk_bytes: About how much of a file validation parses and checks at a time: the
            validation and features steps' memory is bounded by a few chunks, whatever the
            file's size. The stored tables have a row group per chunk, so their bytes (and
            digests) depend on it, as on the pyarrow version.
        description: What the data is, shown in the Dagster UI.
        tls_pins: SHA-256 fingerprints of the https server certificates to accept (on top of
            normal verification); ``SECURE_PIPELINE_SOURCE_TLS_PINS`` adds more at run time.
        read_timeout_seconds: How long one network read may wait (https, s3).
        retention_days: How long raw snapshots of this source (and the snapshots derived from
            them) stay readable; older ones have their data keys destroyed by the daily privacy
            job (storage limitation, GDPR Art. 5(1)(e)). None keeps them until erased.
        partitions: Daily partitions, when the source delivers a batch per day (``{date}`` in
            the location or the file paths); None: one table, ingested whole each time.
    """

    name: str
    files: tuple[SourceFile, ...]
    location: str
    location_env_var: str | None = None
    format: str = "csv"
    max_bytes: int = 512 * 1024 * 1024
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    description: str = ""
    tls_pins: tuple[str, ...] = ()
    read_timeout_seconds: float = 60.0
    retention_days: int | None = None
    partitions: SourcePartitions | None = None

    def files_of(self, partition: str | None) -> tuple[SourceFile, ...]:
        """The files of one day (``{date}`` in their paths replaced), or as written when None."""
        if partition is None:
            return self.files
        return tuple(
            SourceFile(f.member, f.path.replace(PARTITION_PLACEHOLDER, partition))
            for f in self.files
        )
