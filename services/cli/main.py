"""The `hanzo-registry` command: `serve` (all-in-one), one service per process, `check-config`, the management
commands (`tag`, `policy`, `sign`, `vulndb`, `gc`) and the OCI commands (`login`, `push`, `pull`, `ls`, `rm`,
`inspect`, `model`; services/cli/commands.py)."""

from __future__ import annotations

# Imports stay light here: `--help` and `tag` must start fast (no aiohttp, pydantic or grpc until a server or
# the settings are needed). tests/unit/test_cli.py keeps it so.
import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from services.cli import commands, replication

if TYPE_CHECKING:
    import socket

    from services.core.settings import Settings

SERVICES = ("distribution", "scanner", "signer", "gc", "replicator", "webhooks")

EXIT_CODES = """\
exit codes:
  0  done (a server: stopped cleanly on SIGTERM or Ctrl-C)
  1  a command that talks to a registry (tag, policy, sign, gc, vulndb, login, push, pull, ls, rm, inspect,
     model): the registry refused the request (denied, not found, bad credentials; its error is printed) or
     sent content that does not match its digest; gc run --wait: the run failed
  2  bad usage or configuration, or a server that cannot start: a bad setting, a port in use, a data
     directory it cannot write, a backend that does not answer, a TLS file that does not load; one line
     on stderr names the setting and the fix; a bad reference, a missing or unreadable file
  3  the registry cannot be reached, or the connection was lost
  130 interrupted (Ctrl-C)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hanzo-registry", description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", type=Path, help="YAML settings file (environment variables override it)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="every service in one process (the embedded assembly)", epilog=EXIT_CODES)
    for name in SERVICES:
        if name == "gc":
            _gc_parser(sub)
            continue
        sub.add_parser(name, help=f"run the {name} service alone", epilog=EXIT_CODES)
    check = sub.add_parser(
        "check-config",
        help="check everything `serve` checks at start (settings, files, port, backends) and print the "
        "settings (secrets masked)",
        epilog=EXIT_CODES,
    )
    check.add_argument(
        "--offline", action="store_true", help="check the settings and files only, not the port or the backends"
    )
    tag_cmd = sub.add_parser(
        "tag",
        help="point a tag at an existing manifest (an immutable one needs --force)",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    tag_cmd.add_argument("repository", help="e.g. team/app")
    tag_cmd.add_argument("source", help="the tag or digest of the manifest")
    tag_cmd.add_argument("new_tag")
    tag_cmd.add_argument(
        "--registry",
        help="the registry: a URL, or host:port (https first; http too for loopback hosts)\n"
        "default: $HANZO_REGISTRY_URL, else $HANZO_REGISTRY_ADDR, else 127.0.0.1:5000",
    )
    tag_cmd.add_argument("--user", default="hanzo", help="user name for the API key (default: hanzo)")
    tag_cmd.add_argument("--key", help="API key (default: $HANZO_REGISTRY_API_KEY)")
    tag_cmd.add_argument("--force", action="store_true", help="move an immutable tag (admins only)")
    policy_cmd = sub.add_parser(
        "policy",
        help="get, set or remove the policy document (.hanzo/registry.yaml) of a namespace or repository",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    policy_cmd.add_argument("action", choices=["get", "set", "rm"])
    policy_cmd.add_argument("name", metavar="NAMESPACE[/REPOSITORY]")
    policy_cmd.add_argument("file", nargs="?", help="set: the YAML (or JSON) document; - or none: stdin")
    policy_cmd.add_argument("--effective", action="store_true",
                            help="get: the policy in force for a repository (default <- namespace <- repository)")
    policy_cmd.add_argument("--registry", help="as for tag")
    policy_cmd.add_argument("--user", default="hanzo", help="user name for the API key (default: hanzo)")
    policy_cmd.add_argument("--key", help="API key (default: $HANZO_REGISTRY_API_KEY)")
    vulndb_cmd = sub.add_parser("vulndb", help="import OSV records into the vulnerability database, or show it",
                                epilog=EXIT_CODES, formatter_class=argparse.RawTextHelpFormatter)
    vulndb_cmd.add_argument("action", choices=["import", "status"])
    vulndb_cmd.add_argument("path", nargs="?", help="import: an OSV record or array (JSON), or an OSV export zip")
    vulndb_cmd.add_argument("--registry", help="as for tag")
    vulndb_cmd.add_argument("--user", default="hanzo", help="user name for the API key (default: hanzo)")
    vulndb_cmd.add_argument("--key", help="API key (default: $HANZO_REGISTRY_API_KEY)")
    sign_cmd = sub.add_parser(
        "sign",
        help="sign an image with a managed key (cosign's format; `cosign verify --key` accepts it)",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    sign_cmd.add_argument("image", metavar="IMAGE", help="REPOSITORY[:TAG|@DIGEST], e.g. team/app:v1")
    sign_cmd.add_argument("--key", required=True, help="hanzo-kms://projects/<namespace>/keys/<name>")
    sign_cmd.add_argument("--registry", help="as for tag")
    sign_cmd.add_argument("--user", default="hanzo", help="user name for the API key (default: hanzo)")
    sign_cmd.add_argument("--api-key", dest="api_key", help="API key (default: $HANZO_REGISTRY_API_KEY)")
    commands.add_parsers(sub, EXIT_CODES)
    replication.add_parser(sub, EXIT_CODES)
    return parser


def _gc_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gc_cmd = sub.add_parser(
        "gc", help="run the gc service alone; `gc run` starts a garbage-collection run, `gc history` lists the "
        "last runs (over the management API, registry admins)", epilog=EXIT_CODES,
        formatter_class=argparse.RawTextHelpFormatter)
    gc_cmd.add_argument("action", nargs="?", choices=["run", "history"],
                        help="run: start a run; history: the last runs; none: run the gc service alone")
    gc_cmd.add_argument("--dry-run", action="store_true", help="run: find what would be deleted, delete nothing")
    gc_cmd.add_argument("--wait", action="store_true", help="run: wait for the run to finish and print its result")
    gc_cmd.add_argument("--grace-seconds", type=float, help="run: replaces every grace period for this run")
    gc_cmd.add_argument("--limit", type=int, default=20, help="history: runs to list (default 20)")
    gc_cmd.add_argument("--registry", help="as for tag")
    gc_cmd.add_argument("--user", default="hanzo", help="user name for the API key (default: hanzo)")
    gc_cmd.add_argument("--key", help="API key (default: $HANZO_REGISTRY_API_KEY)")


def _gc(args: argparse.Namespace) -> int:
    from services.cli import gc
    from services.cli import tag as tag_command

    try:
        target = tag_command.target_from(args.registry, args.user, args.key)
        if args.action == "history":
            print(gc.history_table(gc.history(target, limit=args.limit)), end="")
            return 0
        run_id = gc.run(target, dry_run=args.dry_run, grace_seconds=args.grace_seconds)
        if not args.wait:
            print(f"GC run {run_id} started{' (dry run)' if args.dry_run else ''}")
            return 0
        record = gc.wait(target, run_id)
        print(gc.summary(record))
        return 0 if record["status"] == "succeeded" else 1
    except tag_command.TagCommandError as exc:
        print(f"hanzo-registry gc: {exc}", file=sys.stderr)
        return exc.exit_code


def _vulndb(args: argparse.Namespace) -> int:
    from services.cli import tag as tag_command
    from services.cli import vulndb

    try:
        target = tag_command.target_from(args.registry, args.user, args.key)
        if args.action == "import":
            if not args.path:
                raise tag_command.TagCommandError("vulndb import needs a PATH", exit_code=2)
            result = vulndb.import_file(target, args.path)
            print(f"imported {result['imported']}, updated {result['updated']}")
        else:
            print(vulndb.status(target))
    except tag_command.TagCommandError as exc:
        print(f"hanzo-registry vulndb: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def _policy(args: argparse.Namespace) -> int:
    from services.cli import policy
    from services.cli import tag as tag_command

    try:
        target = tag_command.target_from(args.registry, args.user, args.key)
        if args.action == "get":
            print(policy.get(target, args.name, effective=args.effective), end="")
        elif args.action == "set":
            print(policy.put(target, args.name, policy.read_document(args.file)), end="")
        else:
            policy.remove(target, args.name)
    except tag_command.TagCommandError as exc:
        print(f"hanzo-registry policy: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def _sign(args: argparse.Namespace) -> int:
    from services.cli import sign as sign_command
    from services.cli import tag as tag_command

    try:
        target = tag_command.target_from(args.registry, args.user, args.api_key)
        signed = sign_command.sign(target, args.image, args.key)
    except tag_command.TagCommandError as exc:
        print(f"hanzo-registry sign: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{args.image} ({signed.get('digest', '')}) signed: {signed.get('signature_digest', '')}")
    return 0


def _tag(args: argparse.Namespace) -> int:
    from services.cli import tag as tag_command

    try:
        target = tag_command.target_from(args.registry, args.user, args.key)
        digest = tag_command.tag(target, args.repository, args.source, args.new_tag, force=args.force)
    except tag_command.TagCommandError as exc:
        print(f"hanzo-registry tag: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{args.repository}:{args.new_tag} -> {digest}")
    return 0


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


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import logging
    from collections.abc import Callable

    from services.cli.preflight import StartupError, http_addr_setting
    from services.core.runtime import listen_urls
    from services.core.settings import SettingsError
    from services.core.telemetry import setup_logging, setup_tracing

    names = list(SERVICES) if args.command == "serve" else [args.command]
    try:
        sockets = _preflight(settings, names)
    except StartupError as exc:
        return _fail(exc)
    service_name = "all-in-one" if args.command == "serve" else args.command
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
    args = _parser().parse_args(argv)
    if args.command == "tag":
        return _tag(args)
    if args.command == "policy":
        return _policy(args)
    if args.command == "sign":
        return _sign(args)
    if args.command == "vulndb":
        return _vulndb(args)
    if args.command == "gc" and args.action:
        return _gc(args)
    if args.command in commands.NAMES:
        return commands.dispatch(args)
    if args.command == "replication":
        return replication.main(args)
    from services.core.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        return _fail(exc)
    if args.command == "check-config":
        return _check_config(settings, offline=args.offline)
    return _serve(args, settings)


if __name__ == "__main__":
    sys.exit(main())
