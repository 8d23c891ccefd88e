"""The OCI commands of `hanzo-registry` as Click commands (`login`, `logout`, `push`, `pull`, `ls`, `rm`,
`inspect`, `model push|pull|inspect|ls`, `scan`, `verify`): options only, so `--help` stays fast; the work is in
services/cli/oci.py, services/cli/layouts.py and services/cli/checks.py, imported when a command runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from services.cli.exits import EXIT_CODES

F = TypeVar("F", bound=Callable[..., Any])

ADDRESSING = """\
\b
references: [REGISTRY/]REPOSITORY[:TAG][@DIGEST], docker's convention (no registry:
$HANZO_REGISTRY_ADDR, else 127.0.0.1:5000; HTTPS, except loopback hosts, which get plain HTTP;
--plain-http and --insecure for others). Credentials: -u/--username with $HANZO_REGISTRY_API_KEY or
--password-stdin, else the docker config (~/.docker/config.json, $DOCKER_CONFIG) that `login` writes
and docker, oras and skopeo read.
"""
EPILOG = EXIT_CODES + "\n" + ADDRESSING

TRANSFERS = """\
\b
Large files: files over 64 MB are pushed in 32 MiB chunks; the session is saved under
$XDG_CACHE_HOME/hanzo-registry/uploads/ after every chunk, so a push that was killed or lost its
connection continues from the registry's offset when run again. Pulls write `.NAME.part` and continue
it with Range; the digest is checked over the whole file before it is renamed into place.
Progress bars (bytes, rate, ETA) go to stderr when it is a terminal (not with -q or -o json).
"""


def _connection(*, output: bool = True) -> Callable[[F], F]:
    """The options every OCI command takes: how to reach the registry, credentials, output."""

    def decorate(f: F) -> F:
        options = [
            click.option("--plain-http", is_flag=True, help="Plain HTTP for a non-loopback registry."),
            click.option("--insecure", is_flag=True, help="HTTPS without verifying the certificate."),
            click.option("--ca-file", help="A CA bundle to trust (besides the system's)."),
            click.option("-u", "--username",
                         help="User name (the password: $HANZO_REGISTRY_API_KEY or --password-stdin)."),
            click.option("--password-stdin", is_flag=True, help="Read the password (API key) from stdin."),
        ]
        if output:
            options.append(click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
                                        show_default=True, help="Text, or one JSON document on stdout."))
        options.append(click.option("-q", "--quiet", is_flag=True, help="No progress bars."))
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def _model_filters(f: F) -> F:
    for option in reversed([
        click.option("--architecture"),
        click.option("--format"),
        click.option("--quantization"),
        click.option("--min-parameters", type=int),
        click.option("--max-parameters", type=int),
        click.option("--query", "-Q", "q", help="Text in the repository, name, architecture or format."),
    ]):
        f = option(f)
    return f


def run(command: str, **values: Any) -> int:
    """Hand the parsed values to services/cli/oci.py (as the namespace it reads)."""
    from services.cli import oci

    return oci.main(argparse.Namespace(command=command, **values), stdin=sys.stdin)


def register(group: click.Group) -> None:
    """Add the OCI commands to `group` (the `hanzo-registry` group)."""

    @group.command(epilog=EPILOG)
    @click.argument("registry")
    @_connection(output=False)
    def login(**values: Any) -> int:
        """Check credentials and store them in the docker config (docker, oras and skopeo read them too)."""
        return run("login", **values)

    @group.command(epilog=EPILOG)
    @click.argument("registry")
    def logout(**values: Any) -> int:
        """Remove a registry's credentials from the docker config."""
        return run("logout", **values)

    @group.command(epilog=EPILOG + "\n" + TRANSFERS + "\n" + LAYOUTS)
    @click.argument("reference", metavar="REF")
    @click.argument("files", metavar="FILE[:MEDIA_TYPE]...", nargs=-1)
    @click.option("--artifact-type", default="application/vnd.unknown.artifact.v1", show_default=True)
    @click.option("--annotation", "-a", multiple=True, metavar="KEY=VALUE", help="Manifest annotation (repeatable).")
    @click.option("--subject", metavar="REF", help="Push as a referrer of this manifest (same repository).")
    @click.option("--from", "source", metavar="oci:DIR[:TAG]|docker-archive:FILE",
                  help="Push the image in an OCI image layout or a `docker save` tarball instead of files.")
    @_connection()
    def push(**values: Any) -> int:
        """Push files as an OCI artifact (as `oras push` does), or an image from a layout (--from)."""
        if not values["files"] and not values["source"]:
            raise click.UsageError("give FILE arguments, or --from oci:DIR[:TAG] or --from docker-archive:FILE")
        if values["files"] and values["source"]:
            raise click.UsageError("give FILE arguments or --from, not both")
        return run("push", **values)

    @group.command(epilog=EPILOG + "\n" + TRANSFERS + "\n" + LAYOUTS)
    @click.argument("reference", metavar="REF")
    @click.option("--dir", "dir", default=".", show_default=True, help="Where to write an artifact's files.")
    @click.option("--to", "destination", metavar="oci:DIR[:TAG]|docker-archive:FILE",
                  help="Write the image into an OCI image layout or a `docker save` tarball.")
    @click.option("--platform", metavar="OS/ARCH[/VARIANT]",
                  help="--to: the platform to take from a multi-platform index (default: this machine's).")
    @_connection()
    def pull(**values: Any) -> int:
        """Pull an artifact's files (named by their titles), or an image into a layout (--to)."""
        return run("pull", **values)

    @group.command(epilog=EPILOG)
    @click.argument("target", required=False, metavar="[REGISTRY|REPOSITORY]")
    @click.option("--models", is_flag=True, help="List models (filters: --architecture, --format, ...).")
    @_model_filters
    @_connection()
    def ls(**values: Any) -> int:
        """List repositories (no argument or REGISTRY), tags (REPOSITORY) or models (--models)."""
        return run("ls", **values)

    @group.command(epilog=EPILOG)
    @click.argument("reference", metavar="REF")
    @_connection()
    def rm(**values: Any) -> int:
        """Delete a manifest (a tag: the manifest it points at, with all its tags)."""
        return run("rm", **values)

    @group.command(epilog=EPILOG)
    @click.argument("reference", metavar="REF")
    @_connection()
    def inspect(**values: Any) -> int:
        """A manifest: media type, digest, platforms, sizes, and the model view of a model."""
        return run("inspect", **values)

    @group.command(epilog=EPILOG)
    @click.argument("reference", metavar="REF")
    @click.option("--rescan", is_flag=True, help="Queue a new scan first (needs push access), then wait for it.")
    @click.option("--wait", "wait", type=float, default=60.0, show_default=True,
                  help="Seconds to wait for a report that is not there yet.")
    @_connection()
    def scan(**values: Any) -> int:
        """The vulnerability report of an image (the scanner's), optionally after a rescan."""
        return run("scan", **values)

    @group.command(epilog=EPILOG)
    @click.argument("reference", metavar="REF")
    @click.option("--key", "key_ref", metavar="hanzo-kms://projects/NS/keys/NAME",
                  help="Only signatures by this managed key count (default: any trusted key).")
    @_connection()
    def verify(**values: Any) -> int:
        """Verify an image's signatures (the signer's check); exit 1 when none verifies."""
        return run("verify", **values)

    @group.group(epilog=EPILOG)
    def model() -> None:
        """Push, pull, inspect and list models."""

    @model.command("push", epilog=EPILOG + "\n" + TRANSFERS)
    @click.argument("directory", metavar="DIR")
    @click.argument("reference", metavar="REF")
    @click.option("--base", metavar="REF", help="The base model (same repository): becomes the `subject`.")
    @click.option("--relation", type=click.Choice(["fine-tune", "quantization", "adapter"]),
                  help="What this model is to --base (default: adapter for LoRA files, else fine-tune).")
    @click.option("--annotation", "-a", multiple=True, metavar="KEY=VALUE")
    @_connection()
    def model_push(**values: Any) -> int:
        """Push a model directory; media types from the file types, artifact type application/vnd.hanzo.model.v1."""
        return run("model", model_command="push", **values)

    @model.command("pull", epilog=EPILOG + "\n" + TRANSFERS)
    @click.argument("reference", metavar="REF")
    @click.argument("directory", metavar="DIR")
    @_connection()
    def model_pull(**values: Any) -> int:
        """Pull a model into a directory."""
        return run("model", model_command="pull", **values)

    @model.command("inspect", epilog=EPILOG)
    @click.argument("reference", metavar="REF")
    @_connection()
    def model_inspect(**values: Any) -> int:
        """The model view (format, parameters, architecture, quantization, files, lineage)."""
        return run("model", model_command="inspect", **values)

    @model.command("ls", epilog=EPILOG)
    @click.argument("target", required=False, metavar="[REGISTRY]")
    @_model_filters
    @_connection()
    def model_ls(**values: Any) -> int:
        """List models."""
        return run("model", model_command="ls", **values)


LAYOUTS = """\
\b
Layouts: oci:DIR[:TAG] is an OCI image layout (oci-layout, index.json, blobs/sha256/...; TAG is the
org.opencontainers.image.ref.name of the index entry, as skopeo and umoci write it);
docker-archive:FILE is a `docker save` tarball (manifest.json, config, layer tars), pushed as an OCI
manifest of its config and layer tars unchanged, and written with uncompressed layers (what docker load
checks). Layout blobs go byte for byte both ways.
"""
