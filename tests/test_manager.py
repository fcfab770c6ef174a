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


def test_threads_loading_one_plugin_file_at_once_each_get_its_stages(write):
    """Found by the soak: a worker's threads loading a new job's plugin file at once; the second
    found the module half imported and registered it without its stage ("unknown transform
    type")."""
    import threading

    plugin = write("slow_plugin.py", "import time\ntime.sleep(0.5)\n" + PLUGIN)
    barrier, registries = threading.Barrier(4), []

    def load() -> None:
        barrier.wait()
        registries.append(StageRegistry(get_plugin_manager(job_plugins=[str(plugin)])))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [r.get("transform", "negate") is not None for r in registries] == [True] * 4


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


KEYS_PLUGIN = """
from typing import Literal

from pydantic import BaseModel, ConfigDict

import etl


class Ping(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    when: list[Literal["completed", "failed"]] = ["completed", "failed"]


@etl.hookimpl
def etl_register_job_keys():
    return {"ping": list[Ping]}
"""


def keyed_job(write, ping: str) -> str:
    write("keys.py", KEYS_PLUGIN)
    return str(
        write(
            "job.yaml",
            f"""
            name: keyed
            plugins: [keys.py]
            source: {{type: generate, rows: 1}}
            sink: {{type: jsonl, path: out}}
            {ping}
            """,
        )
    )


def test_a_plugin_registers_a_job_key_that_is_validated_and_given_to_its_hooks(write):
    job = etl.load_job(keyed_job(write, "ping: [{url: 'http://example.test/hook', when: [failed]}]"))
    [ping] = job.extras["ping"]
    assert (ping.url, ping.when) == ("http://example.test/hook", ["failed"])
    assert job.describe()["ping"] == [{"url": "http://example.test/hook", "when": ["failed"]}]
    assert "ping" not in etl.load_job(keyed_job(write, "")).extras


def test_a_bad_value_of_a_plugins_job_key_is_a_config_error_at_its_line(write):
    with pytest.raises(etl.ConfigErrors) as info:
        etl.load_job(keyed_job(write, "ping: [{url: x, when: [sometimes]}]"))
    assert "job.yaml:5" in str(info.value) and "ping[0].when[0]" in str(info.value) and "'sometimes'" in str(info.value)
    with pytest.raises(etl.ConfigErrors, match='unknown key; did you mean "ping"'):
        etl.load_job(keyed_job(write, "pingg: []"))


def test_the_json_schema_describes_plugins_job_keys(write):
    from etl.schema import job_schema

    write("keys.py", KEYS_PLUGIN)
    schema = job_schema(StageRegistry(get_plugin_manager(job_plugins=["keys.py"])))
    assert "ping" in schema["properties"] and "Ping" in schema["$defs"]


def test_a_plugin_may_not_register_one_of_the_jobs_own_keys(write):
    write("bad.py", "import etl\n\n@etl.hookimpl\ndef etl_register_job_keys():\n    return {'schedule': str}\n")
    with pytest.raises(PluginError, match="registers the job key 'schedule', which is one of the job's own"):
        StageRegistry(get_plugin_manager(job_plugins=["bad.py"]))


def test_threads_loading_one_plugin_file_at_once_all_get_its_stages(write):
    """A worker's threads may load a run's job at the same moment: none may see the plugin
    module half-imported (found in sys.modules, its hooks not defined yet)."""
    import threading

    path = write(
        "slow_plugin.py",
        """
        import time

        time.sleep(0.3)  # a plugin whose import takes a while (heavy imports)

        from etl import Sink, hookimpl


        class Nothing(Sink):
            name = "nothing"

            def write(self, chunk, batches):
                return 0


        @hookimpl
        def etl_register_sinks():
            return [Nothing]
        """,
    )
    found: list[list[str]] = []

    def load() -> None:
        pm = get_plugin_manager(job_plugins=[str(path)])
        found.append(sorted(StageRegistry(pm).names("sink")))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(found) == 4 and all("nothing" in names for names in found), found
