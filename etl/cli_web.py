"""``etl dashboard``: the web dashboard and progress API."""

from __future__ import annotations

import os

import click

from etl import api

__all__ = ["COMMANDS"]

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 for every interface.")
@click.option("--port", type=click.IntRange(0, 65535), default=8088, show_default=True)
@click.option("--read-only", is_flag=True, help="Serve views only: no retry, cancel or clean.")
@click.option(
    "--configs",
    type=click.Path(file_okay=False),
    default=lambda: os.environ.get("ETL_CONFIGS") or ("configs" if os.path.isdir("configs") else None),
    help="Job files whose schedules to show [default: $ETL_CONFIGS, else ./configs if it exists].",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Let pages of this origin (https://app.example.com) read the API and event streams (repeatable).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Also answer to this host name (dash.example.com, *.example.com, or * for any), besides localhost, "
    "the --host name and IP addresses; $ETL_DASHBOARD_ALLOWED_HOSTS adds more, comma-separated (repeatable).",
)
def dashboard(
    host: str,
    port: int,
    read_only: bool,
    configs: str | None,
    cors_origins: tuple[str, ...],
    allowed_hosts: tuple[str, ...],
) -> None:
    """Serve the dashboard and the progress API until Ctrl-C.

    Views are open to whoever reaches the address; retry, cancel and clean need the token in
    ETL_DASHBOARD_TOKEN (without it, there are no actions). It answers only to its allowed
    host names (and to IP addresses): localhost, the --host name, and --allowed-host.
    """
    import uvicorn

    from etl.web.app import DashboardSettings, create_app
    from etl.web.security import default_hosts

    token = os.environ.get("ETL_DASHBOARD_TOKEN") or None
    from_env = [h.strip() for h in os.environ.get("ETL_DASHBOARD_ALLOWED_HOSTS", "").split(",") if h.strip()]
    hosts = tuple(dict.fromkeys([*default_hosts(host), *from_env, *allowed_hosts]))
    queue = api.open_queue()
    settings = DashboardSettings(
        token=token,
        read_only=read_only,
        configs=configs,
        cors_origins=tuple(cors_origins),
        allowed_hosts=hosts,
    )
    app = create_app(queue, settings)
    reach = (
        "loopback only: --host 0.0.0.0 serves every interface"
        if host in _LOOPBACK
        else f"every client that reaches {host}: put it behind TLS and a firewall"
    )
    click.echo(f"etl dashboard on http://{'[' + host + ']' if ':' in host else host}:{port} ({reach})", err=True)
    if read_only:
        click.echo("read-only: views only", err=True)
    elif token is None:
        click.echo("no ETL_DASHBOARD_TOKEN: views only (set it to allow retry, cancel and clean)", err=True)
    else:
        click.echo("actions need the token in ETL_DASHBOARD_TOKEN", err=True)
    click.echo(f"answers to {', '.join(hosts)} and IP addresses (--allowed-host adds names)", err=True)
    click.echo(f"queue {queue.settings.display}", err=True)
    # A client's address (what wrong tokens are counted by, and the scheme its cookie and form
    # checks see) comes from X-Forwarded-For and -Proto only when sent by a proxy named in
    # FORWARDED_ALLOW_IPS: trusted from anyone, they let a client choose its own address.
    forwarded = os.environ.get("FORWARDED_ALLOW_IPS") or None
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        proxy_headers=forwarded is not None,
        forwarded_allow_ips=forwarded,
    )


COMMANDS = [dashboard]
