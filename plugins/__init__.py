"""The built-in stages, imported as ``etl_plugins``.

Each module here is a plugin like any other: it imports only ``etl``'s public API and is
found through the ``etl`` entry-point group declared in ``pyproject.toml``.
"""
