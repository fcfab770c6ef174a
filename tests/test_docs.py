"""The docs stay true to the code: every hook documented, every example job valid, schema current."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

import etl
from etl import hookspecs
from etl.manager import StageRegistry, get_plugin_manager
from etl.schema import job_schema

ROOT = Path(__file__).resolve().parents[1]
HOOKS = {name: fn for name, fn in vars(hookspecs).items() if name.startswith("etl_") and callable(fn)}


def _sections(text: str) -> dict[str, str]:
    """``## etl_hook(args)`` sections of plugin_hooks.md, by hook name."""
    parts = re.split(r"^## ", text, flags=re.M)
    return {re.match(r"[a-z_]+", p)[0]: p for p in parts[1:] if p.startswith("etl_")}


def test_every_hook_and_argument_is_documented():
    sections = _sections((ROOT / "docs/plugin_hooks.md").read_text())
    assert set(sections) == set(HOOKS), "docs/plugin_hooks.md must have one section per hook, and no others"
    for name, fn in HOOKS.items():
        args = list(inspect.signature(fn).parameters)
        heading = sections[name].splitlines()[0]
        assert heading.startswith(f"{name}({', '.join(args)})"), f"heading of {name} should give its signature"
        for arg in args:
            assert f"- `{arg}`" in sections[name], f"{name}: argument {arg} is not documented"


def test_every_hook_has_a_docstring_with_its_arguments():
    for name, fn in HOOKS.items():
        doc = inspect.getdoc(fn) or ""
        for arg in inspect.signature(fn).parameters:
            assert f"{arg}:" in doc, f"{name}'s docstring does not describe {arg}"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_job_validates(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = yaml.safe_load(path.read_text())
    required = {name: "x" for name, p in (spec.get("params") or {}).items() if p.get("required")}
    etl.load_job(path, params=required)
    schema = json.loads((ROOT / "docs/etl-job.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(spec)


def test_the_shipped_json_schema_is_current():
    shipped = json.loads((ROOT / "docs/etl-job.schema.json").read_text())
    assert shipped == job_schema(StageRegistry(get_plugin_manager())), (
        "regenerate it: etl schema -o docs/etl-job.schema.json"
    )


def test_the_readme_commands_exist():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, re.M)
    assert "make test" in (ROOT / ".ci/run").read_text()


def _anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings, as GitHub makes them (a repeated one gets -1…)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", page.read_text(), re.M):
        anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def test_every_link_of_the_docs_leads_to_a_file_and_heading_that_exist():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # not the examples' text
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            file, _, anchor = target.partition("#")
            dest = page.parent / file if file else page
            if not dest.exists():
                broken.append(f"{page.name}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}: {target}: no such heading in {dest.name}")
    assert not broken, "\n".join(broken)
