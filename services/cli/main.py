"""The `hanzo-registry` command (Click): `serve` (all-in-one), one service per process, `check-config`, the
management commands (`tag`, `policy`, `sign`, `vulndb`, `gc`, `replication`; services/cli/management.py) and
the OCI commands (`login`, `push`, `pull`, `ls`, `rm`, `inspect`, `model`, `scan`, `verify`;
services/cli/commands.py)."""

from __future__ import annotations

# Imports stay light here: `--help` and `tag` must start fast (no aiohttp, pydantic or grpc until a server or
# the settings are needed). tests/unit/test_cli.py keeps it so.
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from services.cli import commands, management
from services.cli.exits import EXIT_CODES, INTERRUPTED, USAGE

if TYPE_CHECKING:
    import socket

    from services.core.settings import Settings

SERVICES = ("distribution", "scanner", "signer", "gc", "replicator", "webhooks")


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--config", type=click.Path(path_type=Path),
              help="YAML settings file (environment variables override it).")
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """Hanzo Registry: the OCI registry's servers and its command-line client."""
    ctx.obj = {"config": config}


def serve(ctx: click.Context, command: str) -> int:
    """Start `command` (serve: every service) with the settings of the group's --config."""
    from services.core.settings import SettingsError, load_settings

    root = ctx.find_root()
    try:
        settings = load_settings((root.obj or {}).get("config"))
    except SettingsError as exc:
        return _fail(exc)
    return _serve(command, settings)


@cli.command("serve", epilog=EXIT_CODES)
@click.pass_context
def serve_command(ctx: click.Context) -> int:
    """Every service in one process (the embedded assembly)."""
    return serve(ctx, "serve")


def _service_command(name: str) -> None:
    @cli.command(name, epilog=EXIT_CODES, help=f"Run the {name} service alone.")
    @click.pass_context
    def run_service(ctx: click.Context) -> int:
        return serve(ctx, name)


for _name in SERVICES:
    if _name != "gc":  # `gc` is also `gc run|history` (services/cli/management.py)
        _service_command(_name)


@cli.command("check-config", epilog=EXIT_CODES)
@click.option("--offline", is_flag=True, help="Check the settings and files only, not the port or the backends.")
@click.pass_context
def check_config(ctx: click.Context, offline: bool) -> int:
    """Check everything `serve` checks at start (settings, files, port, backends) and print the settings
    (secrets masked)."""
    from services.core.settings import SettingsError, load_settings

    try:
        settings = load_settings((ctx.find_root().obj or {}).get("config"))
    except SettingsError as exc:
        return _fail(exc)
    return _check_config(settings, offline=offline)


commands.register(cli)
management.register(cli, serve=serve)


def _fail(message: object) -> int:
    print(f"hanzo-registry: {message}", file=sys.stderr)
    return 2


def _preflight(settings: Settings, names: Sequence[str]) -> list[socket.socket]:
    """Everything a server checks before it writes anything; raises StartupError. The sockets listen."""
    from services.cli import preflight

    preflight.check_files(settings, names)
    preflight.wait_for_backends(settings)
    return preflight.bind(settings, names)


async def _run(settings: Settings, names: Sequence[str], sockets: Sequence[socket.socket]) -> None:
    import asyncio

    from services.cli.preflight import StartupError
    from services.core.bootstrap import container
    from services.core.runtime import install_signal_handlers, run_parts
    from services.core.telemetry import Metrics
    from services.distribution import service as distribution
    from services.distribution.management_gc import link_in_process
    from services.gc import service as gc
    from services.replicator import service as replicator
    from services.scanner import service as scanner
    from services.signer import service as signer
    from services.webhooks import service as webhooks

    builders = {
        "distribution": distribution.build,
        "scanner": scanner.build,
        "signer": signer.build,
        "gc": gc.build,
        "replicator": replicator.build,
        "webhooks": webhooks.build,
    }
    stop = asyncio.Event()
    install_signal_handlers(stop)
    opened = False
    try:
        async with container(settings, metrics=Metrics()) as c:
            parts = [await builders[name](c) for name in names]
            link_in_process(parts)
            opened = True
            await run_parts(c, parts, stop=stop, http_sockets=sockets)
    except Exception as exc:
        if opened or isinstance(exc, StartupError):
            raise
        s = settings
        backends = f"blobs: {s.storage.blobs.kind}, metadata: {s.metadata.kind}, events: {s.events.kind}"
        raise StartupError(
            f"cannot open the backends ({backends}): {type(exc).__name__}: {str(exc)[:300]}: check their "
            "settings (hanzo-registry check-config prints them)"
        ) from exc


def _serve(command: str, settings: Settings) -> int:
    import asyncio
    import logging
    from collections.abc import Callable

    from services.cli.preflight import StartupError, http_addr_setting
    from services.core.runtime import listen_urls
    from services.core.settings import SettingsError
    from services.core.telemetry import setup_logging, setup_tracing

    names = list(SERVICES) if command == "serve" else [command]
    try:
        sockets = _preflight(settings, names)
    except StartupError as exc:
        return _fail(exc)
    service_name = "all-in-one" if command == "serve" else command
    # Metadata holds token signing keys and key hashes; blobs may be private images: owner-only files.
    os.umask(0o077)
    setup_logging(settings.telemetry, service_name)
    setup_tracing(settings.telemetry, f"hanzo-registry-{service_name}")
    log = logging.getLogger("hanzo-registry")
    tls = "distribution" in names and settings.server.tls.enabled
    what = "API" if http_addr_setting(settings, names)[1] == "addr" else "ops endpoints"
    log.info("listening on %s (%s of %s)", " ".join(listen_urls(sockets, tls=tls)), what, service_name)
    runner: Callable[..., object] = asyncio.run
    if settings.event_loop == "uvloop":
        import uvloop

        runner = uvloop.run
    try:
        runner(_run(settings, names, sockets))
    except KeyboardInterrupt:
        pass
    except StartupError as exc:
        return _fail(exc)
    except (SettingsError, NotImplementedError) as exc:
        return _fail(exc)
    finally:
        for sock in sockets:
            sock.close()
    return 0


def _check_config(settings: Settings, *, offline: bool) -> int:
    from services.cli import preflight

    try:
        if offline:
            preflight.check_files(settings, SERVICES)
        else:
            for sock in _preflight(settings, SERVICES):
                sock.close()
    except preflight.StartupError as exc:
        return _fail(exc)
    print(settings.model_dump_json(indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit code (EXIT_CODES). Usage errors are one line and exit 2."""
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="hanzo-registry",
                          standalone_mode=False)
    except click.UsageError as exc:
        where = f"hanzo-registry {exc.ctx.command_path.removeprefix('hanzo-registry').strip()}".strip() \
            if exc.ctx else "hanzo-registry"
        print(f"{where}: {exc.format_message()} (see --help)", file=sys.stderr)
        return USAGE
    except click.ClickException as exc:
        print(f"hanzo-registry: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except click.exceptions.Abort:
        print("hanzo-registry: interrupted", file=sys.stderr)
        return INTERRUPTED
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
