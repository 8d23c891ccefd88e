"""The scanner on both assemblies: push -> manifest-pushed event -> inventory, OSV matching, report, SBOM
referrer; the scan gate at pull; re-matching after a database import; re-scans; hostile layers; model files."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pickle
import tarfile
import uuid
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.core.events.envelope import decode
from services.core.runtime import EventConsumer
from services.scanner import service as scanner
from services.scanner.engine import ScanEngine
from tests.integration.conftest import Assembly
from tests.integration.oci import OCI_INDEX, OCI_MANIFEST, digest_of
from tests.integration.test_auth_support import Api, admin_key, bearer, token_for
from tests.integration.topics import read_topic
from tests.unit.scanner.layerkit import DPKG_STATUS, OS_RELEASE_DEBIAN, gz, tar

R = "/v1/registry"
ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
CVSS_CRITICAL = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"

# Real advisories for the versions in the test image (shortened to the fields matching needs).
RECORDS: list[dict[str, Any]] = [
    {"id": "DSA-5532-1", "modified": "2023-10-25T00:00:00Z", "aliases": ["CVE-2023-5363"],
     "summary": "openssl: incorrect cipher key and IV length processing",
     "affected": [{"package": {"ecosystem": "Debian:12", "name": "openssl"},
                   "ranges": [{"type": "ECOSYSTEM",
                               "events": [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}]}]}],
     "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"}]},
    {"id": "GHSA-j8r2-6x86-q33q", "modified": "2023-06-01T00:00:00Z", "aliases": ["CVE-2023-32681", "PYSEC-2023-74"],
     "summary": "Unintended leak of Proxy-Authorization header in requests",
     "affected": [{"package": {"ecosystem": "PyPI", "name": "requests"},
                   "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "2.3.0"}, {"fixed": "2.31.0"}]}]}],
     "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:C/C:H/I:N/A:N"}],
     "database_specific": {"severity": "MODERATE"}},
    {"id": "GHSA-35jh-r3h4-6jhm", "modified": "2021-05-06T00:00:00Z", "aliases": ["CVE-2021-23337"],
     "summary": "Command Injection in lodash",
     "affected": [{"package": {"ecosystem": "npm", "name": "lodash"},
                   "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "4.17.21"}]}]}],
     "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:H/UI:N/S:U/C:H/I:H/A:H"}]},
]
LATER = {"id": "GHSA-xvch-5gv4-984h", "modified": "2022-03-01T00:00:00Z", "aliases": ["CVE-2021-44906"],
         "summary": "Prototype Pollution in minimist",
         "affected": [{"package": {"ecosystem": "npm", "name": "minimist"},
                       "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "0.2.4"},
                                                                {"introduced": "1.0.0"}, {"fixed": "1.2.6"}]}]}],
         "severity": [{"type": "CVSS_V3", "score": CVSS_CRITICAL}]}


def image_layers() -> list[bytes]:
    status = DPKG_STATUS.replace(b"deb12u2", b"deb12u1")
    base = tar([("var/lib/dpkg/status", status), ("usr/lib/os-release", OS_RELEASE_DEBIAN)])
    py = tar([("usr/lib/python3/dist-packages/requests-2.28.1.dist-info/METADATA",
               b"Metadata-Version: 2.1\nName: requests\nVersion: 2.28.1\nLicense: Apache 2.0\n")])
    node = tar([("app/node_modules/lodash/package.json", b'{"name":"lodash","version":"4.17.20"}'),
                ("app/node_modules/minimist/package.json", b'{"name":"minimist","version":"1.2.5"}')])
    return [gz(base), gz(py), gz(node)]


async def push_blob(client: Any, repo: str, data: bytes, *, headers: dict[str, str]) -> None:
    resp = await client.post(f"/v2/{repo}/blobs/uploads/", headers=headers)
    assert resp.status == 202, await resp.text()
    resp = await client.put(f"{resp.headers['Location']}?digest={digest_of(data)}", data=data,
                            headers={**headers, "Content-Type": "application/octet-stream"})
    assert resp.status == 201, await resp.text()


async def push(client: Any, headers: dict[str, str], repo: str, tag: str, layers: list[bytes], *,
               config_type: str = "application/vnd.oci.image.config.v1+json",
               layer_type: str = "application/vnd.oci.image.layer.v1.tar+gzip",
               annotations: list[dict[str, str]] | None = None, artifact_type: str | None = None) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(4).hex()}).encode()
    for blob in (config, *layers):
        await push_blob(client, repo, blob, headers=headers)
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": config_type, "digest": digest_of(config), "size": len(config)},
                           "layers": [{"mediaType": layer_type, "digest": digest_of(b), "size": len(b),
                                       **({"annotations": annotations[i]} if annotations else {})}
                                      for i, b in enumerate(layers)]}
    if artifact_type:
        doc["artifactType"] = artifact_type
    manifest = json.dumps(doc).encode()
    resp = await client.put(f"/v2/{repo}/manifests/{tag}", data=manifest,
                            headers={**headers, "Content-Type": OCI_MANIFEST})
    assert resp.status == 201, await resp.text()
    return digest_of(manifest)


@contextlib.asynccontextmanager
async def running_scanner(a: Assembly) -> AsyncIterator[Any]:
    c = a.c
    c.settings.scanner.rematch_interval_seconds = 0.2
    c.settings.topics.scans = f"registry.scans-{uuid.uuid4().hex[:8]}"
    parts = await scanner.build(c)
    stop = asyncio.Event()
    consumer = EventConsumer(events=c.events, docs=c.docs, metrics=c.metrics, service="scanner",
                             topic=c.settings.topics.manifests, group="hanzo-registry.scanner",
                             handler=parts.consumes[0][1], settings=c.settings.consumer)
    await consumer.setup()
    tasks = [asyncio.create_task(consumer.run(stop)), *(asyncio.create_task(loop(stop)) for loop in parts.loops)]
    try:
        yield parts
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def report(api: Api, repo: str, ref: str, *, until: str = "complete", generation_changed: Any = None,
                 timeout: float = 60.0) -> dict[str, Any]:
    body: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while True:
            body = await api.call("GET", f"{R}/{repo}/{ref}/vulnerabilities", expect=200)
            if body["status"] == until and (generation_changed is None or generation_changed(body)):
                return body
            await asyncio.sleep(0.1)


def _evil_pickle() -> bytes:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("echo pwned",))

    return pickle.dumps({"weights": [1.0, 2.0], "x": Evil()})


def _torch_zip(payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("model/data.pkl", payload)
        zf.writestr("model/version", "3\n")
    return buf.getvalue()


async def test_scan_report_sbom_gate_and_rematch(auth_assembly: Assembly) -> None:
    a = auth_assembly
    client = a.client
    key = admin_key(a)
    admin = Api(client, bearer(key))
    push_auth = bearer(await token_for(client, key, "repository:team/app:pull,push", "repository:team/bad:pull,push",
                                       "repository:ml/model:pull,push"))
    # Consumers pull with pull-only tokens: those who may push read what the gates hold back.
    pull_auth = bearer(await token_for(client, key, "repository:team/app:pull"))
    imported = await admin.call("POST", f"{R}/admin/vulndb", json_body=RECORDS, expect=200)
    assert imported == {"imported": 3, "updated": 0}
    assert await admin.call("POST", f"{R}/admin/vulndb", json_body=RECORDS[0], expect=200) == \
        {"imported": 0, "updated": 0}
    state = await admin.call("GET", f"{R}/admin/vulndb", expect=200)
    assert state["records"] == {"Debian:12": 1, "PyPI": 1, "npm": 1} and state["total"] == 3
    assert state["last_import"]["source"].startswith("upload by")

    async with running_scanner(a):
        digest = await push(client, push_auth, "team/app", "v1", image_layers())
        body = await report(admin, "team/app", "v1")
        assert body["digest"] == digest and body["scanned_at"] and body["db_updated_at"]
        found = {(f["id"], f["package"], f["version"]): f for f in body["vulnerabilities"]}
        assert set(found) == {("DSA-5532-1", "openssl", "3.0.11-1~deb12u1"),
                              ("DSA-5532-1", "libssl3", "3.0.11-1~deb12u1"),
                              ("GHSA-j8r2-6x86-q33q", "requests", "2.28.1"),
                              ("GHSA-35jh-r3h4-6jhm", "lodash", "4.17.20")}, found
        # (openssl's binary packages match the Debian advisory by their source package)
        ssl = found[("DSA-5532-1", "libssl3", "3.0.11-1~deb12u1")]
        assert ssl["aliases"] == ["CVE-2023-5363"] and ssl["fixed_version"] == "3.0.11-1~deb12u2"
        assert ssl["severity"] == "high" and ssl["cvss_score"] == 7.5 and ssl["ecosystem"] == "Debian:12"
        assert ssl["purl"].startswith("pkg:deb/debian/libssl3@3.0.11-1~deb12u1?arch=amd64")
        lodash = found[("GHSA-35jh-r3h4-6jhm", "lodash", "4.17.20")]
        assert lodash["severity"] == "high" and lodash["fixed_version"] == "4.17.21" and not lodash["ignored"]
        assert lodash["layer"] != ssl["layer"]
        assert body["summary"] == {"critical": 0, "high": 3, "medium": 1, "low": 0, "unknown": 0}

        # SBOM: stored, served, and a referrer of the image
        sbom = await admin.call("GET", f"{R}/team/app/v1/sbom", expect=200)
        assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.6"
        purls = {c.get("purl") for c in sbom["components"]}
        assert "pkg:npm/lodash@4.17.20" in purls and "pkg:pypi/requests@2.28.1" in purls
        resp = await client.get(f"/v2/team/app/referrers/{digest}", headers=push_auth)
        referrers = (await resp.json())["manifests"]
        assert [r["artifactType"] for r in referrers] == ["application/vnd.cyclonedx+json"]
        assert referrers[0]["digest"] == body["sbom"]

        # the gate: high findings block; ignoring them (by id or alias) lets the pull through
        assert (await client.get("/v2/team/app/manifests/v1", headers={**pull_auth, **ACCEPT})).status == 200
        await admin.call("PUT", f"{R}/namespaces/team/policy",
                         json_body={"scan": {"enabled": True, "severity_gate": "high"}}, expect=200)
        resp = await client.get("/v2/team/app/manifests/v1", headers={**pull_auth, **ACCEPT})
        assert resp.status == 403
        message = (await resp.json())["errors"][0]["message"]
        assert "scan gate (scan.severity_gate: high)" in message and "3 finding(s)" in message
        assert "GHSA-35jh-r3h4-6jhm (high, lodash 4.17.20)" in message
        await admin.call("PUT", f"{R}/namespaces/team/policy", json_body={"scan": {
            "enabled": True, "severity_gate": "high", "ignore": ["DSA-5532-1", "CVE-2021-23337"]}}, expect=200)
        body = await admin.call("GET", f"{R}/team/app/v1/vulnerabilities", expect=200)
        assert body["summary"]["high"] == 0 and sum(f["ignored"] for f in body["vulnerabilities"]) == 3
        assert (await client.get("/v2/team/app/manifests/v1", headers={**pull_auth, **ACCEPT})).status == 200

        # a re-scan never blocks a pull the last report allowed
        queued = await admin.call("POST", f"{R}/team/app/v1/scan", expect=202)
        assert queued == {"digest": digest, "queued": True}
        assert (await client.get("/v2/team/app/manifests/v1", headers={**pull_auth, **ACCEPT})).status == 200
        before, first_sbom = body["scanned_at"], body["sbom"]
        rescanned = await report(admin, "team/app", "v1", generation_changed=lambda b: b["scanned_at"] != before)
        assert (await client.get("/v2/team/app/manifests/v1", headers={**pull_auth, **ACCEPT})).status == 200
        # its SBOM replaced the first one: one SBOM referrer, not one per scan
        assert rescanned["sbom"] != first_sbom
        resp = await client.get(f"/v2/team/app/referrers/{digest}", headers=push_auth)
        assert [r["digest"] for r in (await resp.json())["manifests"]] == [rescanned["sbom"]]
        resp = await client.get(f"/v2/team/app/manifests/{first_sbom}", headers={**push_auth, **ACCEPT})
        assert resp.status == 404

        # re-matching: a new advisory changes the report (no layer read), gate decisions follow
        assert await admin.call("POST", f"{R}/admin/vulndb", json_body=[LATER], expect=200) == \
            {"imported": 1, "updated": 0}
        body = await report(admin, "team/app", "v1",
                            generation_changed=lambda b: any(f["package"] == "minimist" for f in b["vulnerabilities"]))
        assert body["summary"]["critical"] == 1
        resp = await client.get("/v2/team/app/manifests/v1", headers={**pull_auth, **ACCEPT})
        message = (await resp.json())["errors"][0]["message"]
        assert resp.status == 403 and "GHSA-xvch-5gv4-984h (critical, minimist 1.2.5)" in message

        # a hostile layer fails its scan with a reason; the scanner goes on
        evil = gz(tar([("../../etc/passwd", b"x")]))
        await push(client, push_auth, "team/bad", "v1", [evil])
        failed = await report(admin, "team/bad", "v1", until="failed")
        assert "path traversal" in failed["error"]

        # a model that runs os.system on load: a CRITICAL finding in the same report
        payloads = [_torch_zip(_evil_pickle()), pickle.dumps({"w": [1, 2, 3]})]
        await push(client, push_auth, "ml/model", "v1", payloads,
                   config_type="application/vnd.cncf.model.config.v1+json",
                   layer_type="application/vnd.cncf.model.weight.v1.raw",
                   annotations=[{"org.opencontainers.image.title": "model.pt"},
                                {"org.opencontainers.image.title": "ok.pkl"}],
                   artifact_type="application/vnd.cncf.model.manifest.v1+json")
        model = await report(admin, "ml/model", "v1")
        critical = [f for f in model["vulnerabilities"] if f["severity"] == "critical"]
        assert critical and critical[0]["package"] == "model.pt" and "system" in critical[0]["title"]
        assert critical[0]["ecosystem"] == "model"

    # one ScanCompleted event per stored report that changed
    events = [decode(r.value) for r in await read_topic(a.c.events, a.c.settings.topics.scans, 5, linger=0.5)]
    completed = [e.scan_completed for e in events if e.WhichOneof("payload") == "scan_completed"]
    app_events = [e for e in completed if e.repository == "team/app"]
    assert len(app_events) == 3  # the push, the re-scan, the re-match
    assert app_events[-1].severity_counts["critical"] == 1

    # and the dashboards' metrics counted them
    def sample(name: str, **labels: str) -> float:
        value = a.c.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    assert sample("hanzo_registry_scans_total", trigger="push", status="complete") >= 2
    assert sample("hanzo_registry_scans_total", trigger="push", status="failed") >= 1
    assert sample("hanzo_registry_scans_total", trigger="request", status="complete") == 1
    assert sample("hanzo_registry_scans_total", trigger="rematch", status="complete") >= 1
    assert sample("hanzo_registry_scan_duration_seconds_count", trigger="push") >= 3
    assert sample("hanzo_registry_scan_findings_total", severity="critical") >= 2
    assert a.c.metrics.registry.get_sample_value("hanzo_registry_scan_requests_queued") is not None


async def test_index_answers_per_platform(auth_assembly: Assembly) -> None:
    a = auth_assembly
    client = a.client
    key = admin_key(a)
    admin = Api(client, bearer(key))
    push_auth = bearer(await token_for(client, key, "repository:team/multi:pull,push"))
    await admin.call("POST", f"{R}/admin/vulndb", json_body=RECORDS, expect=200)
    async with running_scanner(a):
        amd = await push(client, push_auth, "team/multi", "amd64", image_layers())
        arm = await push(client, push_auth, "team/multi", "arm64", [gz(tar([("a/node_modules/x/package.json",
                                                                              b'{"name":"x","version":"1.0.0"}')]))])
        manifests = []
        for d, arch in ((amd, "amd64"), (arm, "arm64")):
            resp = await client.get(f"/v2/team/multi/manifests/{d}", headers={**push_auth, **ACCEPT})
            data = await resp.read()
            manifests.append({"mediaType": OCI_MANIFEST, "digest": d, "size": len(data),
                              "platform": {"os": "linux", "architecture": arch}})
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
        resp = await client.put("/v2/team/multi/manifests/v1", data=index,
                                headers={**push_auth, "Content-Type": OCI_INDEX})
        assert resp.status == 201
        body = await report(admin, "team/multi", "v1")
        platforms = {p["platform"]: p for p in body["platforms"]}
        assert set(platforms) == {"linux/amd64", "linux/arm64"}
        assert platforms["linux/amd64"]["summary"]["high"] == 3 and platforms["linux/arm64"]["vulnerabilities"] == []
        assert len(body["vulnerabilities"]) == 4


def test_tar_layer_helper_is_a_tar() -> None:
    assert tarfile.is_tarfile(io.BytesIO(tar([("a", b"b")])))


async def test_grpc_get_report_and_rescan(auth_assembly: Assembly) -> None:
    """The scanner's gRPC contract backs the report and re-scan endpoints: GetReport answers the stored report
    (NOT_FOUND before one exists), Rescan queues a new scan (INVALID_ARGUMENT for a bad digest)."""
    import grpc

    from services.core.proto.hanzo.registry.v1 import scanner_pb2, scanner_pb2_grpc
    from services.core.runtime import start_grpc

    a = auth_assembly
    client = a.client
    key = admin_key(a)
    admin = Api(client, bearer(key))
    push_auth = bearer(await token_for(client, key, "repository:team/grpc:pull,push"))
    await admin.call("POST", f"{R}/admin/vulndb", json_body=RECORDS, expect=200)
    async with running_scanner(a) as parts:
        server, port = await start_grpc("127.0.0.1:0", parts.grpc)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = scanner_pb2_grpc.ScannerStub(channel)  # type: ignore[no-untyped-call]
                missing = "sha256:" + "0" * 64
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await stub.GetReport(scanner_pb2.GetReportRequest(repository="team/grpc", digest=missing))
                assert exc.value.code() == grpc.StatusCode.NOT_FOUND
                digest = await push(client, push_auth, "team/grpc", "v1", image_layers())
                body = await report(admin, "team/grpc", "v1")
                got = (await stub.GetReport(scanner_pb2.GetReportRequest(repository="team/grpc", digest=digest))).report
                assert got.digest == digest and got.repository == "team/grpc"
                counts = {k: v for k, v in got.severity_counts.items() if v}
                assert counts == {k: v for k, v in body["summary"].items() if v}
                assert len(got.vulnerabilities) == len(body["vulnerabilities"])
                queued = await stub.Rescan(scanner_pb2.RescanRequest(repository="team/grpc", digest=digest))
                assert queued.queued
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await stub.Rescan(scanner_pb2.RescanRequest(repository="team/grpc", digest="md5:nope"))
                assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await server.stop(None)


async def test_a_scan_right_after_an_import_matches_what_was_imported(assembly: Assembly) -> None:
    """A scan reloads the vulnerability index when the stored database changed: the scanner's loop reloads it only
    every rematch interval, and a scan asked for right after an import matched the old records (`hanzo-registry
    scan --rescan --wait` returned that report, with none of the new findings). The loop still re-matches the
    reports scanned before the import."""
    a = assembly
    engine = ScanEngine(registry=scanner.build_registry(a.c), docs=a.c.docs, outbox=a.c.outbox,
                        settings=a.c.settings.scanner, topics=a.c.settings.topics)
    await engine.setup()  # its index: the database as it is now
    name = f"GHSA-test-{uuid.uuid4().hex[:8]}"
    advisory = {**LATER, "id": name, "aliases": [f"CVE-2099-{name}"]}
    repo = f"team/fresh{uuid.uuid4().hex[:6]}"
    digest = await push(a.client, {}, repo, "v1", image_layers())
    before = await engine.scan(repo, digest, force=True)
    assert before is not None and name not in {f["id"] for f in before["findings"]}

    await engine.vulndb.import_records([advisory], source="test")
    after = await engine.scan(repo, digest, force=True)
    assert after is not None
    assert (name, "minimist") in {(f["id"], f["package"]) for f in after["findings"]}

    other = f"{repo}-b"
    scanned = await push(a.client, {}, other, "v1", image_layers())
    await engine.scan(other, scanned, force=True)
    await engine.vulndb.import_records([{**advisory, "id": name + "-2", "aliases": [f"CVE-2099-{name}-2"]}],
                                       source="test")
    await engine.scan(repo, digest, force=True)  # reloads the index: the loop must still re-match `other`
    await scanner.Loops(engine, 3600.0, a.c.settings.scanner.vulndb).once()
    report = await engine.reports.get(other, scanned)
    assert report is not None and name + "-2" in {f["id"] for f in report["findings"]}
