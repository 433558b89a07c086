"""Strict offline validation of Kubernetes manifests against the kubernetes client's models.

The client's own deserializer is lenient: it drops unknown keys (a typo such as ``podSelecter``
or a snake_case ``service_account_name`` silently disappears) and coerces primitives (``"false"``
becomes ``True``). So a manifest is checked three ways:

1. a walk over the models' ``openapi_types`` / ``attribute_map``: every key must be a known
   camelCase field and every primitive the declared type;
2. the client's deserializer, which enforces required fields and enums;
3. a round trip through ``sanitize_for_serialization``, which must give back the input.

No cluster is needed. ``IntOrString`` and ``Quantity`` fields are typed ``object`` by the client
and are not checked beyond (1).
"""

import datetime
import re
from typing import Any

import kubernetes.client
from kubernetes.client import ApiClient

_API = ApiClient()  # client-side validation (required fields) is on by default
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
}
_LIST = re.compile(r"list\[(.*)\]")
_DICT = re.compile(r"dict\(([^,]*), (.*)\)|dict\[([^,]*), (.*)\]")


class ManifestError(ValueError):
    """A manifest that does not match the Kubernetes API schema."""


def model_class(manifest: dict[str, Any]) -> type:
    """The client model of a manifest, e.g. ``V1NetworkPolicy`` for networking.k8s.io/v1.

    Args:
        manifest: A parsed manifest with ``apiVersion`` and ``kind``.

    Raises:
        ManifestError: When the client has no model for that version and kind.
    """
    version = str(manifest.get("apiVersion", "")).split("/")[-1]
    name = version[:1].upper() + version[1:] + str(manifest.get("kind", ""))
    cls = getattr(kubernetes.client, name, None)
    if cls is None or not hasattr(cls, "openapi_types"):
        raise ManifestError(
            f"no kubernetes client model for {manifest.get('apiVersion')}/{manifest.get('kind')}"
        )
    return cls


def schema_errors(data: Any, type_name: str, path: str = "$") -> list[str]:
    """Unknown keys, snake_case keys and wrong primitive types in ``data``.

    Args:
        data: The (sub)document, with the API's camelCase keys.
        type_name: Its type as the client declares it (``V1PodSpec``, ``list[V1Volume]``, ...).
        path: Where ``data`` sits in the manifest, for the messages.

    Returns:
        One message per problem, each naming its path.
    """
    if data is None:
        return []
    if match := _LIST.fullmatch(type_name):
        if not isinstance(data, list):
            return [f"{path}: expected a list, found {type(data).__name__}"]
        errors: list[str] = []
        for index, item in enumerate(data):
            errors += schema_errors(item, match.group(1), f"{path}[{index}]")
        return errors
    if match := _DICT.fullmatch(type_name):
        if not isinstance(data, dict):
            return [f"{path}: expected a mapping, found {type(data).__name__}"]
        value_type = match.group(2) or match.group(4)
        errors = []
        for key, value in data.items():
            errors += schema_errors(value, value_type, f"{path}.{key}")
        return errors
    if type_name == "object":  # IntOrString, Quantity, RawExtension
        return []
    if type_name in _PRIMITIVES:
        wrong_bool = type_name in ("int", "float") and isinstance(data, bool)
        if isinstance(data, _PRIMITIVES[type_name]) and not wrong_bool:
            return []
        return [f"{path}: expected {type_name}, found {type(data).__name__} {data!r}"]
    if type_name in ("datetime", "date"):
        if isinstance(data, str | datetime.date):
            return []
        return [f"{path}: expected {type_name}, found {type(data).__name__}"]
    cls = getattr(kubernetes.client.models, type_name)
    if not isinstance(data, dict):
        return [f"{path}: expected a {type_name} mapping, found {type(data).__name__}"]
    attribute_of = {camel: attribute for attribute, camel in cls.attribute_map.items()}
    errors = []
    for key, value in data.items():
        if key not in attribute_of:
            hint = (
                f" (did you mean '{cls.attribute_map[key]}'?)" if key in cls.attribute_map else ""
            )
            errors.append(f"{path}.{key}: unknown field of {type_name}{hint}")
            continue
        errors += schema_errors(value, cls.openapi_types[attribute_of[key]], f"{path}.{key}")
    return errors


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def validate_manifest(manifest: dict[str, Any]) -> Any:
    """Validate one manifest strictly and return the typed client model.

    Args:
        manifest: A parsed manifest (camelCase keys, as ``kubectl apply`` takes it).

    Returns:
        The kubernetes client model object.

    Raises:
        ManifestError: Listing every problem found, each with its path.
    """
    cls = model_class(manifest)
    errors = schema_errors(manifest, cls.__name__)
    model = None
    try:
        # The only public-ish door to the client's deserializer is name-mangled.
        model = _API._ApiClient__deserialize(manifest, cls.__name__)  # type: ignore[attr-defined]
    except (ValueError, TypeError) as exc:
        errors.append(f"$: {exc}")
    changed = model is not None and (
        _API.sanitize_for_serialization(model) != _without_nulls(manifest)
    )
    if changed and not errors:
        errors.append("$: the round trip through the client model changed the manifest")
    if errors:
        name = manifest.get("metadata", {}).get("name")
        raise ManifestError(f"{manifest.get('kind')}/{name}:\n  " + "\n  ".join(errors))
    return model
