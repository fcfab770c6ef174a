"""The dashboard and the progress API: a small ASGI app over the run store (``etl dashboard``)."""
