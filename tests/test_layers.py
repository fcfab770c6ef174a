"""The architecture holds: layers, plugin boundaries, and a light `import etl`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


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
