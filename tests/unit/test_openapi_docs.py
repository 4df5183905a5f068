"""The OpenAPI document stays complete: a new route or model without docs fails here, not in
front of an operator reading /docs.

Walks `app.openapi()` (no server, no Temporal: the app is only built): every operation has a
summary, every JSON request body and 2xx JSON answer has a schema, and every schema a request
body uses carries at least one example, so Swagger UI's "Try it out" starts from a real body.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest

from activities.domain.facts import Facts
from activities.storage import settings as settings_mod
from api.app import create_app

METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home: Path = tmp_path_factory.mktemp("home")
    settings = replace(settings_mod.load(), home=home, database_url=f"sqlite:///{home / 'tempered.db'}")
    return create_app(settings).openapi()


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield f"{method.upper()} {path}", item[method]


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The schema a `$ref` points at (only local component refs occur), else the schema itself."""
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def _json_schema(content: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of a body; {} for none, or for an object with neither properties nor
    typed values (a `dict[str, Any]` says nothing a reader can use)."""
    media = content.get("application/json")
    if media is None:
        return None
    schema = media.get("schema") or {}
    if schema.get("type") == "object" and not schema.get("properties") and schema.get("additionalProperties", True) is True:
        return {}
    return schema


def test_every_operation_has_a_summary(spec) -> None:
    missing = [name for name, op in _operations(spec) if not op.get("summary")]
    assert not missing, "\n".join(missing)


def test_every_json_body_and_answer_has_a_schema(spec) -> None:
    missing = []
    for name, op in _operations(spec):
        if "requestBody" in op and _json_schema(op["requestBody"]["content"]) == {}:
            missing.append(f"{name} request body")
        for code, response in op["responses"].items():
            if code.startswith("2") and _json_schema(response.get("content", {})) == {}:
                missing.append(f"{name} {code}")
    assert not missing, "\n".join(missing)


def _bodies(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, schema) of every JSON request body and 2xx JSON answer."""
    for name, op in _operations(spec):
        if (schema := _json_schema(op.get("requestBody", {}).get("content", {}))) is not None:
            yield f"{name} request body", schema
        for code, response in op["responses"].items():
            if code.startswith("2") and (schema := _json_schema(response.get("content", {}))) is not None:
                yield f"{name} {code}", schema


def test_every_request_and_response_model_has_an_example(spec) -> None:
    missing = []
    for where, schema in _bodies(spec):
        body = _resolve(spec, schema)
        if body.get("type") == "array":  # a list (rules, machines): its items carry the examples
            body = _resolve(spec, body["items"])
        if body.get("type") == "object" and "properties" not in body:
            continue  # a plain mapping (/healthz): its value type is the documentation
        if not body.get("examples"):
            missing.append(f"{where}: {body.get('title')}")
    assert not missing, "\n".join(missing)


def test_every_example_matches_its_schema(spec) -> None:
    """An example Swagger UI offers must be one the API accepts (as far as JSON Schema says). The
    document drops None values from examples, so a nullable field an example sets to None needs
    a default."""
    wrong = []
    for name, component in spec["components"]["schemas"].items():
        schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
        for example in component.get("examples", []):
            for error in jsonschema.Draft202012Validator(schema).iter_errors(example):
                wrong.append(f"{name}: {error.message}")
    assert not wrong, "\n".join(wrong)


def _undescribed(spec: dict[str, Any], schema: dict[str, Any], where: str) -> Iterator[str]:
    """Properties without a description, in `schema` and the objects it nests in place; a
    property that is a model of its own (a $ref) is described by that model's docstring."""
    for name, prop in schema.get("properties", {}).items():
        if not prop.get("description") and not _resolve(spec, prop).get("description"):
            yield f"{where}.{name}"
        for nested in (prop, prop.get("items", {}), *prop.get("anyOf", [])):
            if "properties" in nested:
                yield from _undescribed(spec, nested, f"{where}.{name}")


def test_every_field_is_described(spec) -> None:
    """Every field of our models (not FastAPI's own 422 models) and of the facts body."""
    theirs = {"HTTPValidationError", "ValidationError"}
    missing = [
        field for name, component in spec["components"]["schemas"].items() if name not in theirs
        for field in _undescribed(spec, component, name)
    ]
    facts = spec["paths"]["/v1/boot/{machine_id}/facts"]["post"]["requestBody"]["content"]["application/json"]
    missing += _undescribed(spec, facts["schema"], "facts body")
    assert not missing, "\n".join(missing)


def test_the_facts_body_is_documented_from_the_facts_model(spec) -> None:
    """The facts route reads its body itself (streamed against its own limit), so FastAPI sees
    no body parameter; the schema comes from `activities.domain.facts.Facts`."""
    op = spec["paths"]["/v1/boot/{machine_id}/facts"]["post"]
    schema = _resolve(spec, op["requestBody"]["content"]["application/json"]["schema"])
    assert {"processors", "memory", "disks", "nics", "pci", "dmi"} <= set(schema["properties"])
    assert set(schema["required"]) == {"processors", "memory"}
    assert Facts.model_validate(schema["examples"][0]).processors.count >= 1
    assert "$ref" not in str(schema)  # written in place: nothing points into the model's own $defs
    jsonschema.Draft202012Validator(schema).validate(schema["examples"][0])


def test_operator_routes_declare_the_bearer_scheme(spec) -> None:
    """Swagger UI's Authorize button fills `Authorization: Bearer` for routes that declare it."""
    scheme = spec["components"]["securitySchemes"]["HTTPBearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    open_routes = [name for name, op in _operations(spec) if " /v1/" in name and not op.get("security")]
    assert open_routes == []
