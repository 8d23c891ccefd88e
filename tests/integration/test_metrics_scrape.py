"""The dashboards and alert rules against a running stack: `hanzo-registry serve` (every service in one
process) is started, pushed to, and scraped over HTTP at /metrics, the way Prometheus scrapes it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.dashboards import exported_names, unknown_names
from tests.integration.registry_process import registry_process, request


def _push_small_image(addr: str) -> None:
    config = b"{}"
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    start = request(addr, "POST", f"/v2/metrics/app/blobs/uploads/?digest={digest}", body=config,
                    headers={"Content-Type": "application/octet-stream"})
    assert start.status == 201, start.body
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": digest, "size": len(config)},
                           "layers": []}).encode()
    put = request(addr, "PUT", "/v2/metrics/app/manifests/v1", body=manifest,
                  headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert put.status == 201, put.body


def test_dashboards_and_alerts_query_what_a_running_serve_exports(tmp_path: Path) -> None:
    with registry_process("embedded", tmp_path) as reg:
        _push_small_image(reg.addr)
        scrape = request(reg.addr, "GET", "/metrics")
        assert scrape.status == 200
        assert (scrape.header("Content-Type") or "").startswith("text/plain")
        exported = exported_names(scrape.body.decode())
    assert "hanzo_registry_http_requests_total" in exported
    assert unknown_names(exported) == {}
