"""Loading plugins: entry points, ETL_PLUGINS, a job's plugins:, and loud failures."""

from __future__ import annotations

import textwrap

import pytest

import etl
from etl import PluginError
from etl.manager import StageRegistry, get_plugin_manager

PLUGIN = """
import pyarrow.compute as pc
from etl import StageOptions, Transform, hookimpl

class NegateOptions(StageOptions):
    column: str

class Negate(Transform):
    \"\"\"Negate a numeric column.\"\"\"
    name = "negate"
    Options = NegateOptions

    def apply(self, batch):
        i = batch.schema.get_field_index(self.options.column)
        return batch.set_column(i, self.options.column, pc.negate(batch.column(i)))

@hookimpl
def etl_register_transforms():
    return [Negate]
"""

JOB = """\
name: with-plugin
plugins: [{plugin}]
source: {{type: generate, rows: 10, columns: {{v: {{kind: sequence}}}}}}
transforms: [{{type: negate, column: v}}]
sink: {{type: jsonl, path: out}}
"""


def test_the_built_ins_come_through_entry_points():
    registry = StageRegistry(get_plugin_manager())
    assert registry.get("sink", "duckdb").plugin == "duckdb"
    assert registry.get("source", "generate").version == etl.__version__
    assert get_plugin_manager(entry_points=False).list_name_plugin() == []


def test_a_job_loads_a_plugin_file_beside_it(write):
    write("jobs/negate.py", PLUGIN)
    job_file = write("jobs/job.yaml", JOB.format(plugin="negate.py"))
    result = etl.run(job_file)
    assert result.state == "completed"
    lines = sorted(p.read_text() for p in (job_file.parent.parent / "out").glob("*.jsonl"))
    assert '{"v":-1}' in lines[0].replace(" ", "")


def test_etl_plugins_names_modules_and_files(write, monkeypatch, tmp_path):
    write("negate_mod.py", PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ETL_PLUGINS", "negate_mod")
    registry = StageRegistry(get_plugin_manager())
    assert registry.get("transform", "negate").plugin == "negate_mod"


def test_a_misspelled_hook_fails_loudly(write):
    write("typo.py", "def etl_register_transfroms():\n    return []\n")
    with pytest.raises(
        PluginError,
        match=r"etl_register_transfroms that does not exist; did you mean "
        r"\"etl_register_transforms\"",
    ):
        get_plugin_manager(job_plugins=["typo.py"])


def test_a_hook_without_the_marker_still_runs(write):
    write("unmarked.py", PLUGIN.replace("@hookimpl\n", ""))
    registry = StageRegistry(get_plugin_manager(job_plugins=["unmarked.py"]))
    assert registry.get("transform", "negate") is not None


def test_a_missing_plugin_is_a_config_error_at_its_line(write):
    job_file = write("job.yaml", JOB.format(plugin="no_such_plugin_module"))
    with pytest.raises(etl.ConfigErrors) as info:
        etl.load_job(job_file)
    error = info.value.errors[0]
    assert error.line == 2 and error.key == "plugins[0]"
    assert "plugin module 'no_such_plugin_module' (from plugins:) not found" in error.message


def test_a_plugin_that_raises_on_import_names_the_error(write):
    write("broken.py", "raise RuntimeError('no config')\n")
    with pytest.raises(PluginError, match=r"broken.py' \(from plugins:\) failed to load: RuntimeError: no config"):
        get_plugin_manager(job_plugins=["broken.py"])


def test_two_plugins_may_not_claim_one_type(write):
    write("dup.py", PLUGIN.replace('name = "negate"', 'name = "rename"'))
    with pytest.raises(PluginError, match=r"transform type 'rename' is registered twice: by 'columns' and by 'dup.py'"):
        StageRegistry(get_plugin_manager(job_plugins=["dup.py"]))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("class X: name = 'x'\n", "not a subclass of etl.Transform"),
        (
            "from etl import Transform\nclass X(Transform):\n    name = 'Bad Name'\n    def apply(self, b): return b\n",
            "without a valid `name`",
        ),
        (
            "from etl import Transform, StageOptions\nclass O(StageOptions):\n    type: str\n"
            "class X(Transform):\n    name = 'x'\n    Options = O\n    def apply(self, b): return b\n",
            "option named `type`, which is reserved",
        ),
    ],
)
def test_an_invalid_stage_class_is_refused(write, body, message):
    write("bad_stage.py", textwrap.dedent(body) + "\ndef etl_register_transforms():\n    return [X]\n")
    with pytest.raises(PluginError, match=message):
        StageRegistry(get_plugin_manager(job_plugins=["bad_stage.py"]))


def _installed(site, name: str, entry_point: str, module: str, body: str) -> None:
    """A package as pip would leave it: a module and a dist-info with an `etl` entry point."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[etl]\n{entry_point} = {module}\n")
    (site / f"{module}.py").write_text(body)


def test_a_broken_entry_point_names_its_package(tmp_path, monkeypatch):
    _installed(tmp_path / "site", "etl-broken", "broken", "etl_broken_mod", "import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(
        PluginError,
        match=r"plugin 'broken' of package etl-broken \(etl_broken_mod\) failed to load: "
        r"ModuleNotFoundError",
    ):
        get_plugin_manager()


def test_two_packages_with_one_entry_point_name_are_refused(tmp_path, monkeypatch):
    _installed(tmp_path / "site", "etl-other-csv", "csv", "etl_other_csv", "")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(PluginError, match=r"two installed packages register the plugin 'csv'"):
        get_plugin_manager()
