"""The content model every service reads and writes, over the ports (BlobStore, MetadataStore, outbox).

- `registry.Registry`: blobs, uploads, manifests, tags and referrers of repositories, with their events
  (resolve a reference, push, delete through the outbox, stream a linked blob).
- `graph`: a manifest's graph (index -> platform manifests -> config and layers), walked from metadata.
- `artifacts`: push an artifact as a referrer of an image (the scanner's SBOMs, the signer's signatures).

HTTP-free: the distribution service's handlers translate requests into these calls; the scanner, signer,
GC and replicator use them directly.
"""
