"""The YAML schema of a pipeline, derived from the spec's dataclasses."""

import dataclasses
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    WithJsonSchema,
    create_model,
)
from pydantic_core import PydanticCustomError

from secure_pipeline.pipeline import (
    Column,
    DerivedColumn,
    SecurePipeline,
)

if TYPE_CHECKING:
    pass

YamlPath = tuple[str | int, ...]


def _number(value: Any) -> Any:
    # YAML has real numbers: refuse strings and booleans, and keep an int an int, as in Python
    # (the schema version and the policy fingerprint hash the values as written).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("number_type", "must be a number")
    return value


Number = Annotated[float, PlainValidator(_number), WithJsonSchema({"type": "number"})]


class _Form(NamedTuple):
    """A field whose YAML form differs from its Python value."""

    annotation: Any
    from_yaml: Callable[[Any], Any]
    to_yaml: Callable[[Any], Any]


_FORMS: dict[tuple[type, str], _Form] = {
    # A mapping reads better than a list of pairs, and cannot map one raw spelling twice.
    (Column, "aliases"): _Form(dict[StrictStr, StrictStr], lambda m: tuple(m.items()), dict),
    (DerivedColumn, "values"): _Form(dict[StrictStr, StrictStr], lambda m: tuple(m.items()), dict),
}


class _SpecModel(BaseModel):
    """Base of the derived models: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


_MODELS: dict[type, type[_SpecModel]] = {}
_SPEC_OF: dict[type[_SpecModel], type] = {}


def _attribute_docs(spec_class: type) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style class docstring, by attribute."""
    docs: dict[str, str] = {}
    current = None
    in_section = False
    for line in (inspect.getdoc(spec_class) or "").splitlines():
        if line.strip() == "Attributes:":
            in_section = True
            continue
        if not in_section:
            continue
        entry = re.match(r"^    (\w+): (.*)$", line)
        if entry:
            current = entry.group(1)
            docs[current] = entry.group(2)
        elif line.startswith("        ") and current:
            docs[current] += " " + line.strip()
        elif line.strip():
            break
    return docs


def _yaml_type(annotation: Any) -> Any:
    """The YAML (pydantic) type of a spec field: strict scalars, lists for tuples."""
    if annotation is str:
        return StrictStr
    if annotation is bool:
        return StrictBool
    if annotation is int:
        return StrictInt
    if annotation is float:
        return Number
    if annotation is NoneType or annotation is Any:
        return annotation
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return _model_for(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return annotation
    if origin in (Union, UnionType):
        return Union[tuple(_yaml_type(a) for a in args)]  # noqa: UP007 - built from a tuple
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple[_yaml_type(args[0]), ...]
        items = [_yaml_type(a) for a in args]
        # A plain array schema: Dagster's sample-YAML generator reads `items`, which pydantic's
        # `prefixItems` form of a fixed-length tuple lacks.
        same = all(item == items[0] for item in items)
        array = {
            "type": "array",
            "items": TypeAdapter(items[0]).json_schema() if same else {},
            "minItems": len(items),
            "maxItems": len(items),
        }
        return Annotated[tuple[tuple(items)], WithJsonSchema(array)]
    if origin in (dict, Mapping):
        return dict[StrictStr, _yaml_type(args[1])]
    # A type added to the spec that has no mapping here: pydantic's own handling (lax) still
    # validates it, and test_component.py lists the types that are mapped on purpose.
    return annotation


def _jsonable(value: Any) -> Any:
    """A default as the YAML would write it (for the JSON schema)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _FORMS[(type(value), f.name)].to_yaml(getattr(value, f.name))
            if (type(value), f.name) in _FORMS
            else _jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.init
        }
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _attribute(name: str) -> str:
    # `schema` would shadow a BaseModel method: the model keeps it under another name and
    # reads and writes it under its own (the alias).
    return f"{name}_" if hasattr(BaseModel, name) else name


def _model_for(spec_class: type) -> type[_SpecModel]:
    """The pydantic model of one spec dataclass (cached)."""
    if spec_class in _MODELS:
        return _MODELS[spec_class]
    hints = typing.get_type_hints(spec_class)
    docs = _attribute_docs(spec_class)
    fields: dict[str, Any] = {}
    for spec_field in dataclasses.fields(spec_class):
        if not spec_field.init:
            continue
        form = _FORMS.get((spec_class, spec_field.name))
        annotation = form.annotation if form else _yaml_type(hints[spec_field.name])
        if spec_field.default is not dataclasses.MISSING:
            default = spec_field.default
        elif spec_field.default_factory is not dataclasses.MISSING:
            default = spec_field.default_factory()
        else:
            default = ...
        if default is not ...:
            default = form.to_yaml(default) if form else _jsonable(default)
        alias = spec_field.name if _attribute(spec_field.name) != spec_field.name else None
        fields[_attribute(spec_field.name)] = (
            annotation,
            Field(default, alias=alias, description=docs.get(spec_field.name)),
        )
    model = create_model(
        f"{spec_class.__name__}Yaml",
        __base__=_SpecModel,
        __doc__=(inspect.getdoc(spec_class) or "").split("\n\n")[0],
        **fields,
    )
    _MODELS[spec_class] = model
    _SPEC_OF[model] = spec_class
    return model


def attributes_model() -> type[BaseModel]:
    """The YAML schema of the component's attributes (the `SecurePipeline` spec)."""
    return _model_for(SecurePipeline)


class _RawAttributes(BaseModel):
    """The attributes as written: the component validates them itself.

    Dagster would otherwise refuse a file at its first structural problem, before any value is
    checked; the component reports structure and values together, each at its path. The JSON
    schema shown by ``dg`` (and used by ``dg check yaml`` and editors) is the strict one.
    """

    model_config = ConfigDict(extra="allow")

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        return handler.resolve_ref_schema(handler(attributes_model().__pydantic_core_schema__))
