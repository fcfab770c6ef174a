"""The plugin manager, and the registry of stage types it yields.

:func:`get_plugin_manager` is the only way to make one: it loads the entry points of group
``etl`` (the built-in stages arrive this way too), the modules named in ``ETL_PLUGINS``, and a
job's own ``plugins:``, then checks that every hook a plugin implements exists.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from etl import hookspecs
from etl.config import NAME_PATTERN, Kind
from etl.errors import PluginError, did_you_mean
from etl.stages import Sink, Source, Stage, StageOptions, Transform

__all__ = ["ENTRY_POINT_GROUP", "StageRegistry", "StageType", "get_plugin_manager", "load_plugin"]

ENTRY_POINT_GROUP = "etl"
_BASES: dict[Kind, type[Stage]] = {"source": Source, "transform": Transform, "sink": Sink}
_HOOKS: dict[Kind, str] = {
    "source": "etl_register_sources",
    "transform": "etl_register_transforms",
    "sink": "etl_register_sinks",
}


class _PluginManager(pluggy.PluginManager):
    """Treats every ``etl_*`` function of a plugin as a hook implementation.

    Like pytest with ``pytest_*``: a plugin author who forgets ``@hookimpl`` still gets their
    hook called, and one who misspells a hook name gets an error instead of silence.
    """

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("etl_") and callable(getattr(plugin, name, None)):
            return {}
        return opts


def get_plugin_manager(
    *,
    job_plugins: Iterable[str] = (),
    job_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    entry_points: bool = True,
) -> pluggy.PluginManager:
    """A new plugin manager with every plugin loaded and checked.

    Args:
        job_plugins: a job's ``plugins:``: module names, or ``.py`` files (relative to
            ``job_dir``).
        job_dir: the job file's directory.
        env: where ``ETL_PLUGINS`` is read (the process environment by default): module names
            or files, separated by commas or spaces.
        entry_points: load the ``etl`` entry points (the built-ins among them).

    Raises:
        PluginError: a plugin could not be loaded, implements a hook that does not exist, or
            registers an invalid stage.
    """
    pm = _PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if entry_points:
        _check_entry_points()
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    env = os.environ if env is None else env
    for ref in re.split(r"[,\s]+", env.get("ETL_PLUGINS", "").strip()):
        if ref:
            load_plugin(pm, ref, origin="ETL_PLUGINS")
    for ref in job_plugins:
        load_plugin(pm, ref, base=job_dir, origin="plugins:")
    _check(pm)
    return pm


def _check_entry_points() -> None:
    """Import every ``etl`` entry point, so that a broken or clashing one says who it is.

    (pluggy would load only the first of two entry points with one name, silently.)
    """
    seen: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "?"
        if ep.name in seen and seen[ep.name] != dist:
            raise PluginError(
                f"two installed packages register the plugin {ep.name!r} (entry point group {ENTRY_POINT_GROUP!r}): "
                f"{seen[ep.name]} and {dist}; uninstall one, or rename its entry point"
            )
        seen[ep.name] = dist
        try:
            ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} of package {dist} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
            ) from exc


#: Held while a plugin file is imported: the worker threads loading one job's plugins at once
#: would otherwise find the module in ``sys.modules`` half run, and register it without its stages.
_FILE_IMPORTS = threading.RLock()


def load_plugin(pm: pluggy.PluginManager, ref: str, *, base: Path | None = None, origin: str = "") -> ModuleType:
    """Import a module by name, or a ``.py`` file by path, and register it (once)."""
    where = f" (from {origin})" if origin else ""
    if ref.endswith(".py") or "/" in ref or os.sep in ref:
        path = Path(ref)
        if not path.is_absolute():
            candidates = [(base or Path.cwd()) / path, Path.cwd() / path]
            path = next((p for p in candidates if p.is_file()), candidates[0])
        if not path.is_file():
            raise PluginError(f"plugin file {ref!r}{where} not found (looked for {path})")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        stem = re.sub(r"\W", "_", path.stem)
        name = f"etl_file_plugin_{stem}_{digest}"
        with _FILE_IMPORTS:  # another thread's import in progress is no module yet
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                assert spec and spec.loader
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except Exception as exc:
                    del sys.modules[name]
                    raise PluginError(
                        f"plugin file {ref!r}{where} failed to load: {type(exc).__name__}: {exc}"
                    ) from exc
    else:
        try:
            module = importlib.import_module(ref)
        except ModuleNotFoundError as exc:
            if exc.name and ref.startswith(exc.name):
                raise PluginError(
                    f"plugin module {ref!r}{where} not found; is it installed, or on PYTHONPATH?"
                ) from exc
            raise PluginError(f"plugin module {ref!r}{where} failed to load: {exc}") from exc
        except Exception as exc:
            raise PluginError(f"plugin module {ref!r}{where} failed to load: {type(exc).__name__}: {exc}") from exc
    if not pm.is_registered(module):
        pm.register(module, name=ref)
    return module


def _check(pm: pluggy.PluginManager) -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        known = [name for name in dir(hookspecs) if name.startswith("etl_")]
        bad = re.search(r"unknown hook '([^']+)'", str(exc))
        name = bad[1] if bad else ""
        raise PluginError(
            f"plugin {pm.get_name(exc.plugin)!r} implements {name or 'a hook'} that does not exist"
            f"{did_you_mean(name, known)}; hooks are: {', '.join(known)}"
        ) from None


@dataclass(frozen=True)
class StageType:
    """A stage type: its kind, ``type:`` name, class, and the plugin that registered it."""

    kind: Kind
    name: str
    cls: type[Stage]
    plugin: str
    version: str | None

    @property
    def description(self) -> str:
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class StageRegistry:
    """The stage types that a plugin manager's plugins register."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        versions = {pm.get_name(plugin): dist.version for plugin, dist in pm.list_plugin_distinfo()}
        self._types: dict[Kind, dict[str, StageType]] = {kind: {} for kind in _HOOKS}
        for kind, hook_name in _HOOKS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                version = versions.get(impl.plugin_name) or getattr(impl.plugin, "__version__", None)
                for cls in impl.function() or []:
                    self._add(StageType(kind, getattr(cls, "name", "?"), cls, impl.plugin_name, version))
        self._job_keys: dict[str, tuple[Any, str]] = {}
        for impl in pm.hook.etl_register_job_keys.get_hookimpls():
            for key, kind in (impl.function() or {}).items():
                self._add_job_key(str(key), kind, impl.plugin_name)

    def _add_job_key(self, key: str, kind: Any, plugin: str) -> None:
        from etl.config import JobSpec

        if key in JobSpec.model_fields:
            raise PluginError(f"plugin {plugin!r} registers the job key {key!r}, which is one of the job's own")
        taken = self._job_keys.get(key)
        if taken is not None and taken[0] is not kind:
            raise PluginError(f"job key {key!r} is registered twice: by {taken[1]!r} and by {plugin!r}")
        self._job_keys[key] = (kind, plugin)

    def job_keys(self) -> dict[str, Any]:
        """The top-level job keys that plugins registered, with the type that validates each."""
        return {key: kind for key, (kind, _) in sorted(self._job_keys.items())}

    def job_key_plugins(self) -> dict[str, str]:
        """The plugin that registered each top-level job key."""
        return {key: plugin for key, (_, plugin) in sorted(self._job_keys.items())}

    def _add(self, stage: StageType) -> None:
        base = _BASES[stage.kind]
        what = f"plugin {stage.plugin!r} registers {stage.kind} {stage.cls!r}"
        if not (isinstance(stage.cls, type) and issubclass(stage.cls, base)):
            raise PluginError(f"{what}, which is not a subclass of etl.{base.__name__}")
        if not isinstance(getattr(stage.cls, "name", None), str) or not re.match(NAME_PATTERN, stage.cls.name):
            raise PluginError(f"{what} without a valid `name` (lowercase letters, digits, '-', '_')")
        if not (isinstance(stage.cls.Options, type) and issubclass(stage.cls.Options, StageOptions)):
            raise PluginError(f"{what} whose Options is not a subclass of etl.StageOptions")
        if "type" in stage.cls.Options.model_fields:
            raise PluginError(f"{what} with an option named `type`, which is reserved")
        taken = self._types[stage.kind].get(stage.name)
        if taken is not None and taken.cls is not stage.cls:
            raise PluginError(
                f"{stage.kind} type {stage.name!r} is registered twice: by {taken.plugin!r} and by {stage.plugin!r}"
            )
        self._types[stage.kind][stage.name] = stage

    def get(self, kind: Kind, name: str) -> StageType | None:
        return self._types[kind].get(name)

    def names(self, kind: Kind) -> list[str]:
        return sorted(self._types[kind])

    def all(self) -> list[StageType]:
        return [stage for kind in _HOOKS for _, stage in sorted(self._types[kind].items())]
