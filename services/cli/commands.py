"""Argument parsers of the OCI commands (`login`, `logout`, `push`, `pull`, `ls`, `rm`, `inspect`, `model
push|pull|inspect|ls`): argparse only, so `--help` stays fast; the work is in services/cli/oci.py."""

from __future__ import annotations

import argparse
import sys
from typing import Any

NAMES = frozenset({"login", "logout", "push", "pull", "ls", "rm", "inspect", "model"})

ADDRESSING = """\
references: [REGISTRY/]REPOSITORY[:TAG][@DIGEST], docker's convention (no registry: $HANZO_REGISTRY_ADDR,
else 127.0.0.1:5000; HTTPS, except loopback hosts, which get plain HTTP; --plain-http and --insecure for
others). Credentials: -u/--username with $HANZO_REGISTRY_API_KEY or --password-stdin, else the docker
config (~/.docker/config.json, $DOCKER_CONFIG) that `login` writes and docker, oras and skopeo read.
"""


def _common(*, output: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--plain-http", action="store_true", help="plain HTTP for a non-loopback registry")
    p.add_argument("--insecure", action="store_true", help="HTTPS without verifying the certificate")
    p.add_argument("--ca-file", help="a CA bundle to trust (besides the system's)")
    p.add_argument("-u", "--username", help="user name (the password: $HANZO_REGISTRY_API_KEY or --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="read the password (API key) from stdin")
    if output:
        p.add_argument("-o", "--output", choices=["text", "json"], default="text", help="text (default) or json")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def add_parsers(sub: Any, epilog: str) -> None:
    """Register the commands on `sub` (the subparsers of `hanzo-registry`)."""
    fmt = argparse.RawTextHelpFormatter
    common = _common()
    text = epilog + "\n" + ADDRESSING

    login = sub.add_parser("login", parents=[_common(output=False)], help="check credentials and store them in "
                           "the docker config (docker, oras and skopeo read them too)", epilog=text,
                           formatter_class=fmt)
    login.add_argument("registry", metavar="REGISTRY", help="host[:port]")
    logout = sub.add_parser("logout", help="remove a registry's credentials from the docker config", epilog=text,
                            formatter_class=fmt)
    logout.add_argument("registry", metavar="REGISTRY")

    push = sub.add_parser("push", parents=[common], help="push files as an OCI artifact (as `oras push` does)",
                          epilog=text, formatter_class=fmt)
    push.add_argument("reference", metavar="REF")
    push.add_argument("files", metavar="FILE[:MEDIA_TYPE]", nargs="+")
    push.add_argument("--artifact-type", default="application/vnd.unknown.artifact.v1")
    push.add_argument("--annotation", "-a", action="append", default=[], metavar="KEY=VALUE",
                      help="manifest annotation (repeatable)")
    push.add_argument("--subject", metavar="REF", help="push as a referrer of this manifest (same repository)")

    pull = sub.add_parser("pull", parents=[common], help="pull an artifact's files (named by their titles)",
                          epilog=text, formatter_class=fmt)
    pull.add_argument("reference", metavar="REF")
    pull.add_argument("--dir", default=".", help="where to write the files (default: .)")

    ls = sub.add_parser("ls", parents=[common], help="list repositories (no argument or REGISTRY), tags "
                        "(REPOSITORY) or models (--models)", epilog=text, formatter_class=fmt)
    ls.add_argument("target", nargs="?", metavar="REGISTRY|REPOSITORY")
    ls.add_argument("--models", action="store_true", help="list models (filters: --architecture, --format, ...)")
    _model_filters(ls)

    rm = sub.add_parser("rm", parents=[common], help="delete a manifest (a tag: the manifest it points at, with "
                        "all its tags)", epilog=text, formatter_class=fmt)
    rm.add_argument("reference", metavar="REF")

    inspect = sub.add_parser("inspect", parents=[common], help="a manifest: media type, digest, platforms, sizes, "
                             "and the model view of a model", epilog=text, formatter_class=fmt)
    inspect.add_argument("reference", metavar="REF")

    model = sub.add_parser("model", help="push, pull, inspect and list models", epilog=text, formatter_class=fmt)
    msub = model.add_subparsers(dest="model_command", required=True)
    mpush = msub.add_parser("push", parents=[common], help="push a model directory; media types from the file "
                            "types, artifact type application/vnd.hanzo.model.v1", epilog=text, formatter_class=fmt)
    mpush.add_argument("directory", metavar="DIR")
    mpush.add_argument("reference", metavar="REF")
    mpush.add_argument("--base", metavar="REF", help="the base model (same repository): becomes the `subject`")
    mpush.add_argument("--relation", choices=["fine-tune", "quantization", "adapter"],
                       help="what this model is to --base (default: adapter for LoRA files, else fine-tune)")
    mpush.add_argument("--annotation", "-a", action="append", default=[], metavar="KEY=VALUE")
    mpull = msub.add_parser("pull", parents=[common], help="pull a model into a directory", epilog=text,
                            formatter_class=fmt)
    mpull.add_argument("reference", metavar="REF")
    mpull.add_argument("directory", metavar="DIR")
    minspect = msub.add_parser("inspect", parents=[common], help="the model view (format, parameters, "
                               "architecture, quantization, files, lineage)", epilog=text, formatter_class=fmt)
    minspect.add_argument("reference", metavar="REF")
    mls = msub.add_parser("ls", parents=[common], help="list models", epilog=text, formatter_class=fmt)
    mls.add_argument("target", nargs="?", metavar="REGISTRY")
    _model_filters(mls)


def _model_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--architecture")
    p.add_argument("--format")
    p.add_argument("--quantization")
    p.add_argument("--min-parameters", type=int)
    p.add_argument("--max-parameters", type=int)
    p.add_argument("--query", "-Q", dest="q", help="text in the repository, name, architecture or format")


def dispatch(args: argparse.Namespace) -> int:
    from services.cli import oci

    return oci.main(args, stdin=sys.stdin)
