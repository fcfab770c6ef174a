"""The JSON Schema of job files, generated from the same models that validate them.

Editors that speak the YAML language server use it to complete and check a job as it is
typed. The stages in it are those the plugin manager knows, so a project with extra plugins
generates its own with ``etl schema``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model

from etl.config import JobSpec
from etl.manager import StageRegistry

__all__ = ["job_schema"]

SCHEMA_ID = "https://etl-toolkit.example/schemas/job.schema.json"


def _union(registry: StageRegistry, kind: str) -> Any:
    members = []
    for stage in registry.all():
        if stage.kind != kind:
            continue
        name = "".join(part.title() for part in stage.name.replace("-", "_").split("_"))
        model = create_model(
            f"{kind.title()}{name}",
            __base__=stage.cls.Options,
            __doc__=stage.description or None,
            type=(Literal[stage.name], Field(description=f"{kind} type")),
        )
        members.append(model)
    if not members:
        return dict[str, Any]
    if len(members) == 1:
        return members[0]
    return Annotated[Union[tuple(members)], Field(discriminator="type")]  # noqa: UP007


def job_schema(registry: StageRegistry) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a job file, with the registry's stages."""
    source, transform, sink = (_union(registry, kind) for kind in ("source", "transform", "sink"))
    fields = JobSpec.model_fields
    model = create_model(
        "Job",
        __base__=JobSpec,
        __doc__="An etl job: a source, transforms and a sink, run in chunks.",
        source=(source, Field(description=fields["source"].description)),
        transforms=(list[transform], Field(default_factory=list, description=fields["transforms"].description)),
        sink=(sink, Field(description=fields["sink"].description)),
        **{key: (kind | None, Field(None)) for key, kind in registry.job_keys().items()},
    )
    schema = model.model_json_schema(mode="validation")
    _allow_references(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


# A value written as a `{{ params.NAME }}` template or a `${VAR}` reference is text in the file
# and becomes a number or a boolean only when the job is loaded.
REFERENCE = {"type": "string", "pattern": r"^\s*(\{\{\s*params\.[A-Za-z_][A-Za-z0-9_]*\s*\}\}|\$\{[^}]+\})\s*$"}
_TYPED = {"integer", "number", "boolean"}


def _allow_references(schema: dict[str, Any]) -> None:
    """Let every number and boolean property also be written as a template or reference."""
    models = [schema, *schema.get("$defs", {}).values()]
    for model in models:
        for name, prop in list(model.get("properties", {}).items()):
            if name == "type":
                continue
            kinds = {prop.get("type")} | {p.get("type") for p in prop.get("anyOf", [])}
            if kinds & _TYPED:
                model["properties"][name] = {
                    **{k: v for k, v in prop.items() if k in ("title", "description", "default")},
                    "anyOf": [
                        {k: v for k, v in prop.items() if k not in ("title", "description", "default")},
                        REFERENCE,
                    ],
                }
