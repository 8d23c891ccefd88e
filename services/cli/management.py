"""The management commands of `hanzo-registry` as Click commands (`tag`, `policy`, `sign`, `vulndb`, `gc run|history`,
`replication`), over the management API (services/cli/api.py). Options only at import, so `--help` stays fast; each
command imports its module when it runs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from services.cli.exits import EXIT_CODES

F = TypeVar("F", bound=Callable[..., Any])

TARGET = """\
\b
The registry: --registry URL or host:port (host:port: HTTPS, plain HTTP for loopback hosts);
default $HANZO_REGISTRY_URL, else $HANZO_REGISTRY_ADDR, else 127.0.0.1:5000. The API key:
--key or $HANZO_REGISTRY_API_KEY (keep it out of the process list: prefer the variable).
"""
EPILOG = EXIT_CODES + "\n" + TARGET


def target_options(*, key_flag: str = "--key") -> Callable[[F], F]:
    def decorate(f: F) -> F:
        for option in reversed([
            click.option("--registry", help="The registry: a URL, or host:port (see below)."),
            click.option("--user", default="hanzo", show_default=True, help="User name for the API key."),
            click.option(key_flag, "api_key", help="API key (default: $HANZO_REGISTRY_API_KEY)."),
        ]):
            f = option(f)
        return f

    return decorate


def output_option(f: F) -> F:
    return click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
                        help="Text, or one JSON document on stdout.")(f)


def _emit(output: str, data: Any, text: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2, default=str))
    elif text:
        print(text, end="" if text.endswith("\n") else "\n")


def _fail(command: str, exc: Exception, code: int) -> int:
    print(f"hanzo-registry {command}: {exc}", file=sys.stderr)
    return code


def register(group: click.Group, *, serve: Callable[[click.Context, str], int]) -> None:
    """Add the management commands to `group`; `serve` starts a service (`gc` without an action does)."""

    @group.command(epilog=EPILOG)
    @click.argument("repository")
    @click.argument("source")
    @click.argument("new_tag")
    @click.option("--force", is_flag=True, help="Move an immutable tag (admins only).")
    @target_options()
    @output_option
    def tag(repository: str, source: str, new_tag: str, force: bool, registry: str | None, user: str,
            api_key: str | None, output: str) -> int:
        """Point a tag at an existing manifest (SOURCE: its tag or digest; an immutable tag needs --force)."""
        from services.cli import tag as tag_command

        try:
            target = tag_command.target_from(registry, user, api_key)
            digest = tag_command.tag(target, repository, source, new_tag, force=force)
        except tag_command.TagCommandError as exc:
            return _fail("tag", exc, exc.exit_code)
        _emit(output, {"repository": repository, "tag": new_tag, "digest": digest},
              f"{repository}:{new_tag} -> {digest}")
        return 0

    @group.command(epilog=EPILOG)
    @click.argument("action", type=click.Choice(["get", "set", "rm"]))
    @click.argument("name", metavar="NAMESPACE[/REPOSITORY]")
    @click.argument("file", required=False)
    @click.option("--effective", is_flag=True,
                  help="get: the policy in force for a repository (default <- namespace <- repository).")
    @target_options()
    @output_option
    def policy(action: str, name: str, file: str | None, effective: bool, registry: str | None, user: str,
               api_key: str | None, output: str) -> int:
        """Get, set or remove the policy document (.hanzo/registry.yaml) of a namespace or repository
        (set: FILE is YAML or JSON; - or none: stdin)."""
        from services.cli import policy as policy_command
        from services.cli.target import TagCommandError, target_from

        as_json = output == "json"
        try:
            target = target_from(registry, user, api_key)
            if action == "get":
                print(policy_command.get(target, name, effective=effective, as_json=as_json), end="")
            elif action == "set":
                document = policy_command.read_document(file)
                print(policy_command.put(target, name, document, as_json=as_json), end="")
            else:
                policy_command.remove(target, name)
                if as_json:
                    print(json.dumps({"name": name, "removed": True}))
        except TagCommandError as exc:
            return _fail("policy", exc, exc.exit_code)
        return 0

    @group.command(epilog=EPILOG)
    @click.argument("action", type=click.Choice(["import", "status"]))
    @click.argument("path", required=False)
    @target_options()
    @output_option
    def vulndb(action: str, path: str | None, registry: str | None, user: str, api_key: str | None,
               output: str) -> int:
        """Import OSV records into the vulnerability database (PATH: an OSV record or array as JSON, or an OSV
        export zip), or show its status."""
        from services.cli import vulndb as vulndb_command
        from services.cli.target import TagCommandError, target_from

        try:
            target = target_from(registry, user, api_key)
            if action == "import":
                if not path:
                    raise TagCommandError("vulndb import needs a PATH", exit_code=2)
                result = vulndb_command.import_file(target, path)
                _emit(output, result, f"imported {result['imported']}, updated {result['updated']}")
            else:
                state = vulndb_command.status(target)
                _emit(output, state, json.dumps(state, indent=2))
        except TagCommandError as exc:
            return _fail("vulndb", exc, exc.exit_code)
        return 0

    @group.command(epilog=EPILOG)
    @click.argument("image", metavar="IMAGE")
    @click.option("--key", "key_ref", required=True, metavar="hanzo-kms://projects/NS/keys/NAME",
                  help="The managed key to sign with.")
    @target_options(key_flag="--api-key")
    @output_option
    def sign(image: str, key_ref: str, registry: str | None, user: str, api_key: str | None, output: str) -> int:
        """Sign IMAGE (REPOSITORY[:TAG|@DIGEST], e.g. team/app:v1) with a managed key (cosign's format;
        `cosign verify --key` accepts it)."""
        from services.cli import sign as sign_command
        from services.cli.target import TagCommandError, target_from

        try:
            signed = sign_command.sign(target_from(registry, user, api_key), image, key_ref)
        except TagCommandError as exc:
            return _fail("sign", exc, exc.exit_code)
        _emit(output, signed, f"{image} ({signed.get('digest', '')}) signed: {signed.get('signature_digest', '')}")
        return 0

    @group.command(epilog=EPILOG)
    @click.argument("action", required=False, type=click.Choice(["run", "history"]))
    @click.option("--dry-run", is_flag=True, help="run: find what would be deleted, delete nothing.")
    @click.option("--wait", is_flag=True, help="run: wait for the run to finish and print its result.")
    @click.option("--grace-seconds", type=float, help="run: replaces every grace period for this run.")
    @click.option("--limit", type=int, default=20, show_default=True, help="history: runs to list.")
    @target_options()
    @output_option
    @click.pass_context
    def gc(ctx: click.Context, action: str | None, dry_run: bool, wait: bool, grace_seconds: float | None,
           limit: int, registry: str | None, user: str, api_key: str | None, output: str) -> int:
        """Without ACTION: run the gc service alone. `gc run` starts a garbage-collection run, `gc history` lists
        the last runs (over the management API, registry admins)."""
        if action is None:
            return serve(ctx, "gc")
        from services.cli import gc as gc_command
        from services.cli.target import TagCommandError, target_from

        try:
            target = target_from(registry, user, api_key)
            if action == "history":
                runs = gc_command.history(target, limit=limit)
                _emit(output, {"runs": runs}, gc_command.history_table(runs))
                return 0
            run_id = gc_command.run(target, dry_run=dry_run, grace_seconds=grace_seconds)
            if not wait:
                _emit(output, {"id": run_id, "status": "running", "dry_run": dry_run},
                      f"GC run {run_id} started{' (dry run)' if dry_run else ''}")
                return 0
            record = gc_command.wait(target, run_id)
            _emit(output, record, gc_command.summary(record))
            return 0 if record["status"] == "succeeded" else 1
        except TagCommandError as exc:
            return _fail("gc", exc, exc.exit_code)

    @group.command(epilog=EPILOG)
    @click.argument("action", type=click.Choice(["status", "resync"]))
    @click.argument("rule", required=False, default="")
    @output_option
    @target_options()
    def replication(action: str, rule: str, output: str, registry: str | None, user: str,
                    api_key: str | None) -> int:
        """Replication rules' state (status: per rule its state, lag, last error and counters; RULE: only this
        one) or a full sync of one (resync RULE), over the management API (registry admins)."""
        from services.cli import replication as replication_command

        return replication_command.main(action=action, rule=rule, output=output, registry=registry, user=user,
                                        key=api_key)
