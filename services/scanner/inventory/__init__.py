"""Package inventories of image layers: streamed, decompressed, flattened with whiteouts, parsed (pure, sync).

- `limits`: the bounds every untrusted layer is read under, and the errors that fail a scan.
- `layers`: layer bytes -> a tar stream (gzip, zstd or plain, detected from the bytes), bounded.
- `tree`: the flattened file tree of an image (whiteouts, opaque directories, links kept inside the image).
- `parsers`: package databases and manifests (dpkg, apk, rpm, Python, npm, Go build info, Java jars).
- `scan`: one image's layers -> an Inventory (OS, packages with purl and layer).
"""
