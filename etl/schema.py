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
        model = create_model(
            f"{stage.cls.__name__}{kind.title()}",
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
        source=(source, fields["source"]),
        transforms=(list[transform], fields["transforms"]),
        sink=(sink, fields["sink"]),
    )
    schema = model.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}
