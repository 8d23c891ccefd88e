"""`hanzo-registry tag`: point a tag at an existing manifest over the OCI API (optionally forced), on the core
OCI client. Re-exports the registry target (services/cli/target.py) that every management command uses."""

from __future__ import annotations

from services.cli.target import (
    DEFAULT_REGISTRY,
    KEY_HELP,
    TagCommandError,
    Target,
    candidates,
    target_from,
)

__all__ = ["DEFAULT_REGISTRY", "KEY_HELP", "TagCommandError", "Target", "candidates", "tag", "target_from"]


def tag(target: Target, repository: str, source: str, new_tag: str, *, force: bool) -> str:
    """Make `repository:new_tag` point at `source` (a tag or digest) and return the manifest digest. On the core
    OCI client: the manifest's exact bytes are read and put back under the new tag (`--force`: with the
    registry's `X-Hanzo-Force: true`, which moves an immutable tag for admins)."""
    import asyncio

    return asyncio.run(_tag(target, repository, source, new_tag, force=force))


async def _tag(target: Target, repository: str, source: str, new_tag: str, *, force: bool) -> str:
    # Imported here: `hanzo-registry tag --help` must not load aiohttp (tests/unit/test_cli.py).
    from services.cli import api
    from services.core.client import OciClientError, RemoteRepository
    from services.core.errors import RegistryError

    host, client = api.client_for(target)
    try:
        async with client:
            repo = RemoteRepository(host, repository)  # type: ignore[arg-type]
            fetched = await client.get_manifest(repo, source)
            pushed = await client.push_manifest(
                repo, fetched.content, reference=new_tag, media_type=fetched.descriptor.media_type,
                headers={"X-Hanzo-Force": "true"} if force else None, update_referrers_tag=False)
            return str(pushed.digest)
    except OciClientError as exc:
        raise api.explain(target, exc) from None
    except RegistryError as exc:
        raise TagCommandError(str(exc), exit_code=2) from None
