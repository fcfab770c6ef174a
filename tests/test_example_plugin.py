"""The example plugin package in docs/examples/etl-uppercase, installed as a user would install it.

pip installs it into a directory of its own; the real ``etl`` command, with that directory on
PYTHONPATH, must find it through the ``etl`` entry-point group, list it, and run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

EXAMPLE = ROOT / "docs/examples/etl-uppercase"

pytestmark = pytest.mark.slow

JOB = """\
name: shout
source:
  type: generate
  rows: 250
  columns:
    id: {kind: sequence}
    environment: {kind: choice, values: [production, Staging, dév]}
    label: {kind: string, prefix: item-}
    size: {kind: int, min: 1, max: 9}
transforms:
  - {type: uppercase, columns: [environment, label]}
sink: {type: jsonl, path: out/shout, mode: replace}
chunk_size: 100
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example package, pip-installed into a directory of its own (built from a copy, so
    that setuptools' build/ and egg-info stay out of the repository)."""
    root = tmp_path_factory.mktemp("example")
    source = root / "etl-uppercase"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(source)],
        check=True,
    )
    return target


@pytest.fixture
def etl_with(site, cli):
    """Run the real ``etl`` command with the installed example on PYTHONPATH."""
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(*args, env={"PYTHONPATH": path})

    return run


def test_etl_plugins_lists_the_installed_transform(etl_with):
    done = etl_with("plugins", "--json")
    assert done.returncode == 0, done.stderr
    stages = {(s["kind"], s["type"]): s for s in json.loads(done.stdout)}
    uppercase = stages[("transform", "uppercase")]
    assert (uppercase["plugin"], uppercase["version"]) == ("uppercase", "0.1.0")
    assert [(o["name"], o["required"]) for o in uppercase["options"]] == [("columns", True)]
    assert uppercase["options"][0]["description"] == "the text columns to upper-case"
    assert ("source", "generate") in stages, "the built-ins are still there"


def test_a_job_runs_the_installed_transform(etl_with, write, tmp_path):
    job = write("shout.yaml", JOB)
    done = etl_with("run", str(job), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows_written"] == 250

    parts = sorted((tmp_path / "out/shout").glob("part-*.jsonl"))
    assert len(parts) == 3
    rows = [json.loads(line) for part in parts for line in part.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == list(range(1, 251))
    assert {r["environment"] for r in rows} == {"PRODUCTION", "STAGING", "DÉV"}
    assert all(r["label"] == f"ITEM-{r['id']}" for r in rows)
    assert all(isinstance(r["size"], int) for r in rows), "other columns pass through"


def test_the_installed_transform_validates_its_options(etl_with, write):
    job = write("typo.yaml", JOB.replace("{type: uppercase, columns:", "{type: uppercase, colums:"))
    done = etl_with("validate", str(job))
    assert done.returncode == 2
    assert 'transforms[0].colums: unknown key; did you mean "columns"?' in done.stderr
