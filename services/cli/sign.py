"""`hanzo-registry sign REPOSITORY[:TAG|@DIGEST] --key hanzo-kms://projects/<namespace>/keys/<name>`: sign an
image with a managed key over the management API (cosign's tag scheme; `cosign verify --key` accepts it)."""

from __future__ import annotations

import json
import urllib.parse

from services.cli.api import call as _call
from services.cli.api import connect
from services.cli.target import TagCommandError, Target


def split_image(image: str) -> tuple[str, str]:
    """(repository, reference) of `repo:tag`, `repo@sha256:...` or `repo` (tag latest). A registry host in
    front (`host:5000/team/app:v1`) is dropped: --registry says where the registry is."""
    if "@" in image:
        repository, _, reference = image.partition("@")
    else:
        slash = image.rfind("/")
        colon = image.rfind(":")
        repository, reference = (image[:colon], image[colon + 1:]) if colon > slash else (image, "latest")
    first, _, rest = repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        repository = rest
    if not repository or not reference:
        raise TagCommandError(f"{image!r} is not REPOSITORY[:TAG|@DIGEST]", exit_code=2)
    return repository, reference


def sign(target: Target, image: str, key: str) -> dict[str, str]:
    repository, reference = split_image(image)
    path = f"/v1/registry/{urllib.parse.quote(repository, safe='/')}/{urllib.parse.quote(reference, safe=':')}/sign"
    body, _ = _call(connect(target), "POST", path, body=json.dumps({"key": key}).encode(),
                    headers={"Content-Type": "application/json"})
    answer: dict[str, str] = json.loads(body)
    return answer
