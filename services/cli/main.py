"""The `hanzo-registry` command: `serve` (all-in-one) or one service per process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from services.cli import tag as tag_command
from services.core.bootstrap import Container, container
from services.core.runtime import ServiceParts, install_signal_handlers, run_parts
from services.core.settings import Settings, SettingsError, load_settings
from services.core.telemetry import Metrics, setup_logging, setup_tracing
from services.distribution import service as distribution
from services.gc import service as gc
from services.replicator import service as replicator
from services.scanner import service as scanner
from services.signer import service as signer

Builder = Callable[[Container], Awaitable[ServiceParts]]
SERVICES: dict[str, Builder] = {
    "distribution": distribution.build,
    "scanner": scanner.build,
    "signer": signer.build,
    "gc": gc.build,
    "replicator": replicator.build,
}
log = logging.getLogger("hanzo-registry")


async def _run(settings: Settings, names: Sequence[str]) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    async with container(settings, metrics=Metrics()) as c:
        parts = [await SERVICES[name](c) for name in names]
        await run_parts(c, parts, stop=stop)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hanzo-registry", description=__doc__)
    parser.add_argument("--config", type=Path, help="YAML settings file (environment variables override it)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="every service in one process (the embedded assembly)")
    for name in SERVICES:
        sub.add_parser(name, help=f"run the {name} service alone")
    sub.add_parser("check-config", help="validate the settings and print them (secrets masked)")
    tag_cmd = sub.add_parser("tag", help="point a tag at an existing manifest (an immutable one needs --force)")
    tag_cmd.add_argument("repository", help="e.g. team/app")
    tag_cmd.add_argument("source", help="the tag or digest of the manifest")
    tag_cmd.add_argument("new_tag")
    tag_cmd.add_argument("--registry", default="http://127.0.0.1:5000", help="base URL of the registry")
    tag_cmd.add_argument("--user", default="hanzo", help="user name for the API key")
    tag_cmd.add_argument("--key", help="API key (default: $HANZO_REGISTRY_API_KEY)")
    tag_cmd.add_argument("--force", action="store_true", help="move an immutable tag (admins only)")
    return parser


def _tag(args: argparse.Namespace) -> int:
    try:
        digest = tag_command.tag(
            tag_command.target_from(args.registry, args.user, args.key),
            args.repository,
            args.source,
            args.new_tag,
            force=args.force,
        )
    except tag_command.TagCommandError as exc:
        print(f"hanzo-registry tag: {exc}", file=sys.stderr)
        return 1
    print(f"{args.repository}:{args.new_tag} -> {digest}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "tag":
        return _tag(args)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"hanzo-registry: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(settings.model_dump_json(indent=2))
        return 0
    # Metadata holds token signing keys and key hashes; blobs may be private images: owner-only files.
    os.umask(0o077)
    names = list(SERVICES) if args.command == "serve" else [args.command]
    service_name = "all-in-one" if args.command == "serve" else args.command
    setup_logging(settings.telemetry, service_name)
    setup_tracing(settings.telemetry, f"hanzo-registry-{service_name}")
    runner: Callable[..., object] = asyncio.run
    if settings.event_loop == "uvloop":
        import uvloop

        runner = uvloop.run
    try:
        runner(_run(settings, names))
    except KeyboardInterrupt:
        pass
    except (SettingsError, NotImplementedError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
