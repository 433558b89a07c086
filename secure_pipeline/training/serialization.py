"""Models on disk: skops with an explicit list of trusted types, never pickle.

A valid signature proves who published bytes, not that loading them is safe: a pickle runs
arbitrary code as it loads. skops stores a model as data and refuses any type that is not
listed as trusted; this module's list names exactly the types the built-in model pipelines
contain, and a pipeline whose estimator needs more declares them in its spec
(``ModelSpec.trusted_types``). Training checks the saved model against that list, so a missing
declaration fails the training run rather than the first load.
"""

import re
import zipfile
from collections.abc import Iterable
from io import BytesIO
from typing import Any

from secure_pipeline.errors import ConfigurationError, SecurePipelineError

# Everything skops does not trust by default that the built-in model pipelines contain. A
# model that needs more than this and the spec's declared types was not built by this project.
TRUSTED_TYPES: tuple[str, ...] = (
    # The imputer of numeric inputs that may be missing records the dtype it was fitted on; a
    # dtype is rebuilt from its name and runs no code.
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
)

_ARRAY_ENTRY = re.compile(r'"(\d+\.npy)"')
_OBJECT_ID = re.compile(r'"__id__": (\d+)')
_PICKLE_PREFIXES = (b"\x80", b"(", b"c", b"]", b"}")  # protocol 2+ opcode, or protocol 0/1


class UntrustedModelError(SecurePipelineError):
    """A model file is not a skops file made of trusted types; it was not loaded."""


def dump_model(model: Any) -> bytes:
    """Serialize a fitted model with skops, byte-for-byte reproducibly.

    skops names array entries and links shared objects by object ids (memory addresses), and
    stamps entries with the current time. All are normalised — ids and arrays renumbered in the
    order the schema first names them (consistently, so links still resolve), a fixed
    timestamp — so the same model always has the same bytes: retraining from a recorded
    snapshot reproduces the recorded model digest.
    """
    import skops.io as sio

    raw = sio.dumps(model, compression=zipfile.ZIP_DEFLATED)
    out = BytesIO()
    with zipfile.ZipFile(BytesIO(raw)) as source, zipfile.ZipFile(out, "w") as target:
        schema = source.read("schema.json").decode()
        names: dict[str, str] = {}
        for match in _ARRAY_ENTRY.finditer(schema):
            names.setdefault(match.group(1), f"{len(names):06d}.npy")
        schema = _ARRAY_ENTRY.sub(lambda m: f'"{names[m.group(1)]}"', schema)
        ids: dict[str, str] = {}  # object ids skops uses to link shared objects
        schema = _OBJECT_ID.sub(
            lambda m: f'"__id__": {ids.setdefault(m.group(1), str(len(ids) + 1))}', schema
        )
        entries = {"schema.json": schema.encode()}
        for info in source.infolist():
            if info.filename != "schema.json":
                entries[names.get(info.filename, info.filename)] = source.read(info.filename)
        for name in sorted(entries):
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            target.writestr(entry, entries[name])
    return out.getvalue()


def allowed_types(trusted: Iterable[str] = ()) -> list[str]:
    """The types loading accepts: the project's `TRUSTED_TYPES` plus those a spec declares.

    Args:
        trusted: The pipeline spec's ``model.trusted_types``.
    """
    return sorted({*TRUSTED_TYPES, *trusted})


def undeclared_types(data: bytes, trusted: Iterable[str] = ()) -> list[str]:
    """Types in a skops file that loading would refuse, given the spec's declared types.

    Args:
        data: A skops file's bytes.
        trusted: The pipeline spec's ``model.trusted_types``.
    """
    import skops.io as sio

    return sorted(set(sio.get_untrusted_types(data=data)) - set(allowed_types(trusted)))


def require_declared_types(data: bytes, trusted: Iterable[str], source: str = "model") -> None:
    """Refuse, at training time, a freshly saved model that loading would refuse later.

    Args:
        data: The model file just written by `dump_model`.
        trusted: The pipeline spec's ``model.trusted_types``.
        source: What to call the model in the error.

    Raises:
        ConfigurationError: Listing the exact types to add to ``model.trusted_types``.
    """
    missing = undeclared_types(data, trusted)
    if missing:
        listed = ", ".join(missing)
        raise ConfigurationError(
            f"{source} contains types outside the trusted list: {listed}. Loading refuses "
            "every type that is neither the project's nor declared by the pipeline, so this "
            "model could never be judged or served. These are the estimator's own classes: "
            "if you trust the library that provides them, declare them in the pipeline spec, "
            f"model.trusted_types: [{listed}] (they are shown in the model card), then retrain."
        )


def load_model(data: bytes, source: str = "model", trusted: Iterable[str] = ()) -> Any:
    """Load a skops model, refusing pickle files and any untrusted type.

    Args:
        data: The file's bytes (already verified against their digest).
        source: What to call the file in errors.
        trusted: Types the pipeline spec declares (``model.trusted_types``), accepted on top
            of `TRUSTED_TYPES`. Always the spec's list, never one read from a stored record.

    Returns:
        The model.

    Raises:
        UntrustedModelError: For pickle/joblib data, for anything that is not a skops archive,
            and for a skops file containing a type outside `TRUSTED_TYPES` and ``trusted``.
    """
    import skops.io as sio

    if not zipfile.is_zipfile(BytesIO(data)):
        kind = "a pickle stream" if data[:1] in _PICKLE_PREFIXES else "not a skops archive"
        raise UntrustedModelError(
            f"{source} is {kind}; only skops files are loaded. Pickle and joblib files run "
            "code while loading and are refused even when signed."
        )
    try:
        untrusted = set(sio.get_untrusted_types(data=data))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise UntrustedModelError(f"{source} is not a valid skops file: {exc}") from None
    unexpected = sorted(untrusted - set(allowed_types(trusted)))
    if unexpected:
        raise UntrustedModelError(
            f"{source} contains types outside the trusted list: {', '.join(unexpected)}. "
            "They were not loaded. A model from this project's trainer contains none beyond "
            "the types its pipeline spec declares: investigate where this file came from, and "
            "declare them in the spec's model.trusted_types only if this project's trainer "
            "produced the model with an estimator that needs them."
        )
    return sio.loads(data, trusted=sorted(untrusted))
