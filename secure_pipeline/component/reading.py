"""YAML attributes to a `SecurePipeline`, every problem named by its YAML path and line."""

import ast
import dataclasses
import difflib
import importlib
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Any, NamedTuple, Union
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    TypeAdapter,
    ValidationError,
)

from secure_pipeline.component.schema import (
    _FORMS,
    _SPEC_OF,
    YamlPath,
    _attribute,
    _SpecModel,
    attributes_model,
)
from secure_pipeline.errors import ConfigurationError
from secure_pipeline.pipeline import (
    Column,
    DatasetSchema,
    DerivedColumn,
    SecurePipeline,
    SourceFile,
    SourceSpec,
)

if TYPE_CHECKING:
    from dagster_shared.yaml_utils.source_position import SourcePositionTree


PACKAGE_PREFIX = "package:"
# Fields naming where data lives or which secrets a step receives: a template here would put
# a deployment's location or credential into the spec.
_LOCATION_FIELDS = frozenset(
    {"location", "location_env_var", "landing_env_var", "env_secrets", "tls_pins", "image"}
)

_TEMPLATE = re.compile(r"\{\{|\{%")
_QUOTED = r"(?P<v>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"


class _Problem(NamedTuple):
    path: YamlPath
    message: str


def _path_text(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text or "(the attributes)"


def _annotation_at(path: YamlPath) -> Any:
    """The YAML type at a path of the attributes (to name the keys a mapping accepts)."""
    annotation: Any = attributes_model()
    for part in path:
        while typing.get_origin(annotation) in (Union, UnionType):
            options = [a for a in typing.get_args(annotation) if a is not NoneType]
            annotation = options[0] if len(options) == 1 else Any
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            by_alias = {(f.alias or n): f for n, f in annotation.model_fields.items()}
            if part not in by_alias:
                return Any
            annotation = by_alias[part].annotation
        elif typing.get_origin(annotation) is tuple and isinstance(part, int):
            args = typing.get_args(annotation)
            annotation = args[0] if args[-1] is Ellipsis else args[min(part, len(args) - 1)]
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return Any
    return annotation


def _known_keys(path: YamlPath) -> list[str]:
    annotation = _annotation_at(path)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(f.alias or n) for n, f in annotation.model_fields.items()]
    return []


def _yaml_hint(value: Any) -> str:
    if isinstance(value, bool):
        return (
            " (YAML reads an unquoted yes/no/on/off/true/false as a boolean: quote the value "
            "to keep it text)"
        )
    if value is None:
        return " (YAML reads an empty value, null or ~ as nothing: quote it to keep it text)"
    if isinstance(value, int | float):
        return f" (quote it to keep it text: '{value}')"
    return ""


def _found(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _structural(error: Mapping[str, Any], prefix: YamlPath, base: YamlPath = ()) -> _Problem:
    """A pydantic error as a problem at its YAML path, in words a user can act on.

    Args:
        error: The error, located within the value validated.
        prefix: The path of the attributes in the file.
        base: The path of the value validated, within the attributes.
    """
    loc = (*base, *error["loc"])
    path = (*prefix, *loc)
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        message = "unknown key" + (f"; did you mean {close[0]!r}?" if close else "")
        if known:
            message += f" (known keys: {', '.join(known)})"
        return _Problem(path, message)
    if kind == "missing":
        return _Problem(
            path, "an item is missing here" if isinstance(loc[-1], int) else "is required"
        )
    messages = {
        "literal_error": lambda: f"must be one of {error['ctx']['expected']}",
        "string_type": lambda: "must be text",
        "int_type": lambda: "must be a whole number",
        "bool_type": lambda: "must be true or false",
        "number_type": lambda: "must be a number",
        "tuple_type": lambda: "must be a list",
        "list_type": lambda: "must be a list",
        "dict_type": lambda: "must be a mapping (key: value)",
        "model_type": lambda: "must be a mapping (key: value)",
        "too_long": lambda: "has too many items",
        "too_short": lambda: "has too few items",
    }
    message = messages[kind]() if kind in messages else error["msg"]
    message += f", found {_found(value)}"
    if kind == "string_type" or (kind == "literal_error" and not isinstance(value, str)):
        message += _yaml_hint(value)
    return _Problem(path, message)


def _templates(value: Any, path: YamlPath) -> list[_Problem]:
    """Every templated string, refused with its path."""
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _templates(v, (*path, k))]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in _templates(v, (*path, i))]
    if not isinstance(value, str) or not _TEMPLATE.search(value):
        return []
    field_names = {part for part in path if isinstance(part, str)}
    if field_names & _LOCATION_FIELDS:
        return [
            _Problem(
                path,
                "templates are refused in locations and secrets: write the default location "
                "here and name the variable that overrides it (source.location_env_var, "
                "orchestration.landing_env_var), or the Kubernetes secret (env_secrets); the "
                "value is read at run time and never enters the spec, the UI or the manifests",
            )
        ]
    return [
        _Problem(
            path,
            "templates are not rendered in a pipeline spec: write the value itself (the spec is "
            "fingerprinted and recorded in signed manifests, so it must not depend on the "
            "loading process's environment)",
        )
    ]


def _package_location(location: str) -> str:
    """``package:<package>/<folder>/`` as the ``file://`` URI of that installed folder.

    Raises:
        ValueError: When the package cannot be imported or has no such folder.
    """
    package, _, folder = location.removeprefix(PACKAGE_PREFIX).partition("/")
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", package):
        raise ValueError(
            f"{location!r}: write package:<dotted.package>/<folder>/, e.g. "
            "package:secure_pipeline.reference/data/"
        )
    parts = [p for p in folder.split("/") if p]
    if folder.startswith("/") or ".." in parts:
        raise ValueError(f"{location!r}: the folder must stay inside the package")
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ValueError(f"{location!r}: package {package!r} cannot be imported ({exc})") from exc
    origin = getattr(module, "__file__", None)
    if origin is None or not hasattr(module, "__path__"):
        raise ValueError(f"{location!r}: {package!r} is not an installed regular package")
    directory = Path(origin).parent.joinpath(*parts)
    if not directory.is_dir():
        raise ValueError(f"{location!r}: the package has no folder {directory}")
    return directory.as_uri() + "/"


def _source_location(source: SourceSpec, path: YamlPath) -> tuple[SourceSpec, list[_Problem]]:
    """The source with its location resolved (``package:``), and what is wrong with it."""
    location = source.location
    if location.startswith(PACKAGE_PREFIX):
        try:
            location = _package_location(location)
        except ValueError as exc:
            return source, [_Problem((*path, "location"), str(exc))]
    parts = urlsplit(location)
    if parts.username or parts.password:
        return source, [
            _Problem(
                (*path, "location"),
                "credentials must not be written into a location (the spec is shown in the UI "
                "and recorded in manifests): the connectors take them from the environment",
            )
        ]
    return dataclasses.replace(source, location=location), []


def _value(value: Any, base: Any = None) -> Any:
    """A validated YAML value as the spec's value: models become their dataclasses."""
    if isinstance(value, _SpecModel):
        return _build(value, base)
    if isinstance(value, tuple):
        return tuple(_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _value(v) for k, v in value.items()}
    return value


def _field_default(spec_field: dataclasses.Field) -> Any:
    if dataclasses.is_dataclass(spec_field.default):
        return spec_field.default
    if spec_field.default_factory is not dataclasses.MISSING:
        made = spec_field.default_factory()
        return made if dataclasses.is_dataclass(made) else None
    return None


def _build(model: _SpecModel, base: Any = None) -> Any:
    """The dataclass of a validated model: the keys written, on top of ``base`` if given."""
    spec_class = _SPEC_OF[type(model)]
    given = {}
    for spec_field in dataclasses.fields(spec_class):
        attribute = _attribute(spec_field.name)
        if not spec_field.init or attribute not in model.model_fields_set:
            continue
        value = getattr(model, attribute)
        form = _FORMS.get((spec_class, spec_field.name))
        given[spec_field.name] = (
            form.from_yaml(value) if form else _value(value, _field_default(spec_field))
        )
    return dataclasses.replace(base, **given) if base is not None else spec_class(**given)


# Valid stand-ins for required sections that could not be read, so that the other sections'
# values are still checked; problems that involve a stand-in are not reported.
_STAND_INS: dict[str, Any] = {
    "name": "pipeline",
    # The members the default model reads.
    "source": SourceSpec(
        "source",
        (SourceFile("train", "train.csv"), SourceFile("test", "test.csv")),
        "file:///stand-in/",
    ),
    "schema": DatasetSchema(
        "schema",
        (Column("x", "float"), Column("y", "category", allowed=("a", "b"))),
        label="y",
        positive_label="a",
    ),
}


def _listed(error: ConfigurationError) -> list[str]:
    """The problems a spec's error lists, one per ``  - `` line."""
    lines = str(error).splitlines()
    listed = [line[4:] for line in lines if line.startswith("  - ")]
    return listed or [str(error)]


def _first_field(text: str, spec_class: type) -> str | None:
    """The field of ``spec_class`` a message names first."""
    names = [f.name for f in dataclasses.fields(spec_class)]
    hits = [(m.start(), n) for n in names if (m := re.search(rf"\b{re.escape(n)}\b", text))]
    return min(hits)[1] if hits else None


def _index(items: Sequence[Any], match: Callable[[Any], bool]) -> int | None:
    return next((i for i, item in enumerate(items) if match(item)), None)


def _second(values: Sequence[Any]) -> int | None:
    """The index of the first value seen before (a duplicate)."""
    seen = set()
    for i, value in enumerate(values):
        if value in seen:
            return i
        seen.add(value)
    return None


class _Located(NamedTuple):
    path: YamlPath
    sections: frozenset[str]  # the sections the problem involves


def _locate(message: str, spec: dict[str, Any]) -> _Located | None:
    """Where a problem the spec reports lives in the YAML, and what it involves."""
    source, schema = spec["source"], spec["schema"]
    features, model = spec.get("features"), spec.get("model")
    files, columns = source.files, schema.columns

    def at(*path: str | int | None, involves: Sequence[str]) -> _Located:
        return _Located(tuple(p for p in path if p is not None), frozenset(involves))

    def quoted(pattern: str) -> str | None:
        match = re.search(pattern.replace("<v>", _QUOTED), message)
        return ast.literal_eval(match.group("v")) if match else None

    if message.startswith("pipeline name "):
        return at("name", involves=["name"])
    if message.startswith("source name "):
        return at("source", "name", involves=["source"])
    if message == "the source lists no files":
        return at("source", "files", involves=["source"])
    if message.startswith("source file members must be unique"):
        i = _second([f.member for f in files])
        return at("source", "files", i, "member" if i is not None else None, involves=["source"])
    if (member := quoted(r"^source file member <v> must be")) is not None:
        i = _index(files, lambda f: f.member == member)
        return at("source", "files", i, "member", involves=["source"])
    if (file_path := quoted(r"^source file path <v> must be")) is not None:
        i = _index(files, lambda f: f.path == file_path)
        return at("source", "files", i, "path", involves=["source"])
    if message.startswith("location_env_var "):
        return at("source", "location_env_var", involves=["source"])
    if message.startswith("source max_bytes "):
        return at("source", "max_bytes", involves=["source"])
    if message.startswith("source chunk_bytes "):
        return at("source", "chunk_bytes", involves=["source"])
    if message.startswith("schema column names must be unique"):
        i = _second([c.name for c in columns])
        return at("schema", "columns", i, "name" if i is not None else None, involves=["schema"])
    if message == "the schema has no columns":
        return at("schema", "columns", involves=["schema"])
    if message.startswith("label "):
        return at("schema", "label", involves=["schema"])
    if (name := quoted(r"^sensitive feature <v> ")) is not None:
        i = _index(spec.get("sensitive_features", ()), lambda f: f == name)
        if i is not None:
            return at("sensitive_features", i, involves=["sensitive_features", "schema"])
        j = _index(columns, lambda c: c.name == name)
        if j is not None:  # marked by its role
            return at("schema", "columns", j, "role", involves=["schema", "features"])
        return at("features", "derived", involves=["features", "schema"])
    if (name := quoted(r"^(personal )?columns? <v> (has role|and|must be)")) is not None:
        i = _index(columns, lambda c: c.name == name)
        field = (
            "role"
            if " has role " in message
            else "source"
            if " both read " in message
            else ("dtype")
        )
        if " both read " in message:  # the second of the two is the one to change
            second = quoted(r"^columns .*? and <v> both")
            i = _index(columns, lambda c: c.name == second)
        return at("schema", "columns", i, field, involves=["schema"])
    if message.startswith("only one column may have role") or message.startswith("header name "):
        return at("schema", "columns", involves=["schema"])
    if (name := quoted(r"^category column <v> must list")) is not None:
        i = _index(columns, lambda c: c.name == name)
        return at("schema", "columns", i, "allowed", involves=["schema"])
    if (name := quoted(r"^column <v>: ")) is not None:
        i = _index(columns, lambda c: c.name == name)
        rest = message.split(": ", 1)[1]
        raw = quoted(r"^column .*?: alias <v> maps")
        if raw is not None:
            return at("schema", "columns", i, "aliases", raw, involves=["schema"])
        return at("schema", "columns", i, _first_field(rest, Column), involves=["schema"])
    if message.startswith("column name "):
        i = _index(columns, lambda c: c.name == quoted(r"^column name <v>"))
        return at("schema", "columns", i, "name", involves=["schema"])
    if message.startswith("positive_label "):
        return at("schema", "positive_label", involves=["schema"])
    if message.startswith("row bounds "):
        field = "min_rows" if schema.min_rows < 0 else "max_rows"
        return at("schema", field, involves=["schema"])
    if message.startswith("the pipeline trains a classifier"):
        field = "label" if schema.label is None else "positive_label"
        return at("schema", field, involves=["schema"])
    if features is not None and (name := quoted(r"^feature setting names <v>,")) is not None:
        for setting in ("exclude", "log1p"):
            if name in getattr(features, setting):
                i = list(getattr(features, setting)).index(name)
                return at("features", setting, i, involves=["features", "schema"])
        return at("features", "bands", name, involves=["features", "schema"])
    if (name := quoted(r"^band column <v> must")) is not None:
        return at("features", "bands", name, involves=["features", "schema"])
    if (name := quoted(r"^band cut points of <v>")) is not None:
        return at("features", "bands", name, involves=["features"])
    if model is not None and (name := quoted(r"^model exclude_features names <v>")) is not None:
        i = _index(model.exclude_features, lambda f: f == name)
        return at("model", "exclude_features", i, involves=["model", "features", "schema"])
    if message == "the model has no input features left":
        return at("model", "exclude_features", involves=["model", "features", "schema"])
    if match := re.match(r"^model (train_member|test_member) ", message):
        return at("model", match.group(1), involves=["model", "source"])
    if message.startswith("model holdout_fraction"):
        return at("model", "holdout_fraction", involves=["model"])
    derived_name = quoted(r"^(derived (feature|map|band|date_difference)|date difference) <v>")
    if features is not None and derived_name is not None:
        i = _index(features.derived, lambda d: d.name == derived_name)
        rest = message.split(repr(derived_name), 1)[-1]
        field = (
            "values" if rest.startswith((" maps", " leaves")) else _first_field(rest, DerivedColumn)
        )
        return at("features", "derived", i, field, involves=["features", "schema"])
    if model is not None and (match := re.match(
        r"^model (estimator|trusted type|folds|cross_validation_below)", message
    )):  # fmt: skip
        field = match.group(1).replace("trusted type", "trusted_types")
        return at("model", field, involves=["model"])
    if (name := quoted(r"^fairness_report_only names <v>")) is not None:
        policy = spec.get("policy")
        i = _index(policy.fairness_report_only, lambda f: f == name) if policy else None
        return at("policy", "fairness_report_only", i, involves=["policy", "sensitive_features"])
    return None


def _locate_own(section: str, message: str, value: Any, written: Any) -> YamlPath:
    """The path of a problem a section's own ``problems()`` reports.

    Args:
        section: The section.
        message: The problem.
        value: The section's value.
        written: The section as written (to point at a setting the user wrote).
    """
    if section == "orchestration":
        stage = re.match(r"^(ingest|train|registry|privacy) (namespace|service account) ", message)
        if stage:
            return (section, stage.group(1), stage.group(2).replace(" ", "_"))
        if message.startswith("each stage needs its own Kubernetes namespace"):
            stages = ("ingest", "train", "registry", "privacy")
            namespaces = [getattr(value, stage).namespace for stage in stages]
            clashing = [
                stage
                for stage, namespace in zip(stages, namespaces, strict=True)
                if namespaces.count(namespace) > 1 or namespace == value.control_namespace
            ]
            chosen = [s for s in clashing if isinstance(written, Mapping) and s in written]
            for stage in chosen or clashing:
                return (section, stage, "namespace")
    field = _first_field(message, type(value))
    return (section, field) if field else (section,)


def _without_field(path: YamlPath, message: str) -> str:
    """The message without the field name its path already ends with (when it reads well)."""
    last = path[-1] if path else None
    if isinstance(last, str) and message.startswith(f"{last} "):
        rest = message[len(last) + 1 :]
        if not rest.startswith(("and ", "or ")):
            return rest
    return message


# Sections that check themselves (``problems()``); the spec repeats their problems.
_OWN_PROBLEMS: dict[str, str] = {
    "policy": "", "orchestration": "", "canary": "canary: ", "privacy": "",
    "monitoring": "monitoring: ",
}  # fmt: skip


class _Reading:
    """One reading of a component's attributes: every problem found, then the spec."""

    def __init__(self, prefix: YamlPath) -> None:
        self.prefix = prefix
        self.problems: list[_Problem] = []

    def add(self, path: YamlPath, message: str) -> None:
        self.problems.append(_Problem((*self.prefix, *path), _without_field(path, message)))

    def sections(self, attributes: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
        """The sections that could be read, as spec values, and the names of the others."""
        by_key = _top_fields()
        for key in attributes:
            if key not in by_key:
                error = {"type": "extra_forbidden", "loc": (key,)}
                self.problems.append(_structural(error, self.prefix))
        spec_fields = {f.name: f for f in dataclasses.fields(SecurePipeline)}
        values: dict[str, Any] = {}
        unread: set[str] = set()
        for key, model_field in by_key.items():
            if key not in attributes:
                if model_field.is_required():
                    self.add((key,), "is required")
                    unread.add(key)
                continue
            try:
                parsed = _adapter(key).validate_python(attributes[key])
            except ValidationError as exc:
                for error in exc.errors():
                    self.problems.append(_structural(error, self.prefix, (key,)))
                unread.add(key)
                continue
            value = _value(parsed, _field_default(spec_fields[key]))
            if key == "source":
                # A refused location leaves the rest of the source readable (the spec does
                # not judge locations), so the source is still checked.
                value, problems = _source_location(value, (*self.prefix, key))
                self.problems.extend(problems)
            values[key] = value
        return values, unread

    def own_problems(self, values: Mapping[str, Any], attributes: Mapping[str, Any]) -> set[str]:
        """The problems of the sections that check themselves, as the spec repeats them."""
        said = set()
        for section, spec_prefix in _OWN_PROBLEMS.items():
            if section not in values:
                continue
            for message in values[section].problems():
                path = _locate_own(section, message, values[section], attributes.get(section))
                self.add(path, message)
                said.add(spec_prefix + message)
        return said

    def spec_problems(self, messages: list[str], values: dict, unread: set[str]) -> None:
        """The spec's other problems, each at its path, except those involving a stand-in."""
        spec = {**_STAND_INS, **values}
        for message in messages:
            located = _locate(message, spec)
            if located is None:
                # Not a problem this module knows how to place: still reported, whole.
                suffix = " (this may follow from the problems above)" if unread else ""
                self.add((), message + suffix)
            elif not located.sections & unread:
                self.add(located.path, message)


_ADAPTERS: dict[str, TypeAdapter] = {}


def _top_fields() -> dict[str, Any]:
    """The attributes' fields by YAML key."""
    return {(f.alias or n): f for n, f in attributes_model().model_fields.items()}


def _adapter(key: str) -> TypeAdapter:
    if key not in _ADAPTERS:
        _ADAPTERS[key] = TypeAdapter(_top_fields()[key].annotation)
    return _ADAPTERS[key]


def pipeline_from_attributes(
    attributes: Any,
    *,
    prefix: Sequence[str | int] = (),
    positions: "SourcePositionTree | None" = None,
) -> SecurePipeline:
    """The `SecurePipeline` a component's YAML attributes declare.

    Every section that can be read is checked, even when others cannot: the sections that
    check themselves (policy, orchestration, canary) on their own, the rest by the spec's
    validation with valid stand-ins for required sections that could not be read (problems
    that involve a stand-in are left out).

    Args:
        attributes: The attributes as parsed from YAML (templates unrendered).
        prefix: Their path in the file (``("attributes",)`` in a ``defs.yaml``), so that every
            problem is named by its full path.
        positions: Source positions of the file, to give each problem its line.

    Returns:
        The spec, equal to one declared in Python with the same values.

    Raises:
        ConfigurationError: Listing every problem, each with its path (and line).
    """
    reading = _Reading(tuple(prefix))
    if not isinstance(attributes, Mapping):
        reading.add((), f"must be a mapping of the pipeline's settings, found {_found(attributes)}")
        raise _report(reading.problems, positions, None)
    templated = _templates(attributes, tuple(prefix))
    values, unread = reading.sections(attributes)
    said = reading.own_problems(values, attributes)
    pipeline = None
    try:
        pipeline = SecurePipeline(**{**{k: _STAND_INS[k] for k in unread & _STAND_INS.keys()},
                                     **values})  # fmt: skip
    except ConfigurationError as exc:
        reading.spec_problems([m for m in _listed(exc) if m not in said], values, unread)
    if templated or reading.problems or pipeline is None:
        # A templated value is refused as such, not also for the type it fails to be.
        places = {problem.path for problem in templated}
        kept = [p for p in reading.problems if p.path not in places]
        name = attributes.get("name")
        raise _report(
            [*templated, *kept],
            positions,
            name if isinstance(name, str) else None,
            unread,
            tuple(prefix),
        )
    return pipeline


def _report(
    problems: list[_Problem],
    positions: "SourcePositionTree | None",
    name: str | None,
    unread: set[str] | None = None,
    prefix: YamlPath = (),
) -> ConfigurationError:
    """One error listing every problem at its path, in file order."""
    unique = list(dict.fromkeys(problems))
    lines = []
    filename = None
    for problem in unique:
        line, column = None, 0
        if positions is not None:
            position, _ = positions.lookup_closest_and_path(list(problem.path), None)
            filename, line, column = position.filename, position.start.line, position.start.col
        lines.append(((line or 0, column), _path_text(problem.path), problem.message, line))
    lines.sort(key=lambda entry: entry[0])
    where = f"{filename}: " if filename else ""
    what = f"pipeline {name!r}" if name else "the pipeline"
    count = f"{len(lines)} problem" + ("s" if len(lines) != 1 else "")
    body = "\n".join(
        f"  - {path}: {message}" + (f" (line {line})" if line else "")
        for _, path, message, line in lines
    )
    held_back = ""
    if unread:
        names = [_path_text((*prefix, key)) for key in sorted(unread)]
        sections = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        held_back = (
            f"\nThe values of {sections} (and what refers to them) are checked once the "
            "problems above are fixed."
        )
    return ConfigurationError(
        f"{where}{what} is invalid ({count}; each is named by its YAML path):\n{body}{held_back}"
    )
