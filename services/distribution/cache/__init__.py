"""The pull-through cache: repositories under `proxy.namespace` (default `cache/`) mirror upstream registries.

- `remotes`: the upstreams (settings, or the list PUT through the management API, passwords sealed) and how a
  cached repository name maps to an upstream repository (also containerd's `?ns=` mirror requests).
- `records`: when each cached manifest and blob was last pulled (written in batches, read by GC's expiry) and
  when each cached tag was last confirmed upstream.
- `upstream`: the upstream requests, through the core OCI client, with failures classified.
- `blobfetch`: one upstream fetch per blob digest, streamed to every waiting client while it is stored.
- `service`: `PullThroughCache`, what the /v2 handlers call on a cached repository.
"""
