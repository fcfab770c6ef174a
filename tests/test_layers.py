"""The architecture holds: layers, plugin boundaries, and a light `import etl`."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _contract_layers() -> list[str]:
    """The layers of the contract on ``etl`` in pyproject.toml, top to bottom."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [contract] = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    assert contract["containers"] == ["etl"]
    return [" | ".join(name.strip() for name in layer.split("|")) for layer in contract["layers"]]


def _documented_layers() -> list[str]:
    """The layers that docs/architecture.md lists, top to bottom: ``- `a | b`: what they own``."""
    text = (ROOT / "docs/architecture.md").read_text()
    section = text.split("\n## Layers, top to bottom\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `([^`]+)`:", section, flags=re.M)


def test_import_linter_contracts_are_kept():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_documented_layers_are_those_of_the_contract():
    documented = _documented_layers()
    assert documented, "docs/architecture.md lists no layers"
    assert documented == _contract_layers(), "docs/architecture.md and pyproject.toml list different layers"


def test_every_module_of_etl_is_in_a_layer():
    """A module left out of the contract would be free to import anything."""
    layered = {name for layer in _contract_layers() for name in layer.split(" | ")}
    modules = {p.stem for p in (ROOT / "etl").glob("*.py") if p.stem != "__init__"}
    packages = {p.parent.name for p in (ROOT / "etl").glob("*/__init__.py")}
    assert modules | packages == layered


def test_import_etl_loads_no_queue_database_or_cloud_client():
    code = (
        "import sys, etl\n"
        "heavy = ['huey', 'redis', 'click', 'google.cloud', 'duckdb', 'pyarrow', 'psycopg']\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_library_is_silent_until_an_application_enables_logging(tmp_path):
    code = "import etl; etl.run(etl.load_job(text=open(0).read()))"
    job = "name: quiet\nsource: {type: generate, rows: 10}\nsink: {type: jsonl, path: out}\n"
    result = subprocess.run([sys.executable, "-c", code], input=job, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
