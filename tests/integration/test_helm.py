"""The Helm chart: `helm lint`, `helm template` with the default values and with every feature on, every
rendered manifest validated by kubeconform against the Kubernetes JSON schemas (offline: the schemas the
`kubernetes-validate` package ships, with their absolute `$ref`s pointed at the local copy; CRDs such as
ServiceMonitor and PrometheusRule have no schema there and are skipped), the rendered settings file loading
into the registry's own Settings, and values.schema.json fresh from the settings model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import infra

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "hanzo-registry"
KUBERNETES = "1.33.0"
VALUES = {"default": [], "full": ["-f", str(CHART / "ci" / "full-values.yaml")],
          "incluster": ["-f", str(CHART / "ci" / "incluster-values.yaml")]}


def helm(*args: str) -> str:
    done = subprocess.run([infra("HANZO_TOOL_HELM"), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def render(name: str) -> list[dict[str, Any]]:
    out = helm("template", "hzr", str(CHART), "--namespace", "registry", *VALUES[name])
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The strict standalone schemas of one Kubernetes version, with `/api/_definitions.json` refs made local."""
    import kubernetes_validate

    source = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{KUBERNETES}-local-strict"
    root = tmp_path_factory.mktemp("k8s-schemas")
    target = root / source.name
    target.mkdir()
    for path in source.iterdir():
        text = path.read_text().replace('"/api/_definitions.json', f'"file://{target}/_definitions.json')
        (target / path.name).write_text(text)
    return root


def kubeconform(manifests: str, schemas: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "manifests.yaml"
    path.write_text(manifests)
    location = (str(schemas) + "/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/"
                "{{ .ResourceKind }}{{ .KindSuffix }}.json")
    return subprocess.run(
        [infra("HANZO_TOOL_KUBECONFORM"), "-strict", "-ignore-missing-schemas", "-summary", "-output", "text",
         "-kubernetes-version", KUBERNETES, "-schema-location", location, str(path)],
        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("values", sorted(VALUES))
def test_lint(values: str) -> None:
    out = helm("lint", str(CHART), "--strict", *VALUES[values])
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", sorted(VALUES))
def test_rendered_manifests_validate(values: str, schemas: Path, tmp_path: Path) -> None:
    docs = render(values)
    done = kubeconform(yaml.safe_dump_all(docs), schemas, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    core = [d for d in docs if d["kind"] not in ("ServiceMonitor", "PrometheusRule")]
    assert f"Valid: {len(core)}, Invalid: 0, Errors: 0" in done.stdout, done.stdout


def test_validation_is_not_vacuous(schemas: Path, tmp_path: Path) -> None:
    docs = render("default")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/x"
    done = kubeconform(yaml.safe_dump_all(docs), schemas, tmp_path)
    assert done.returncode != 0 and "paht" in done.stdout


def test_default_values_render_every_service() -> None:
    docs = render("default")
    kinds: dict[str, list[str]] = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d["metadata"]["name"])
    services = ["distribution", "gc", "replicator", "scanner", "signer", "webhooks"]
    assert sorted(n.removeprefix("hzr-hanzo-registry-") for n in kinds["Deployment"]) == services
    assert sorted(n.removeprefix("hzr-hanzo-registry-") for n in kinds["HorizontalPodAutoscaler"]) == [
        "distribution", "scanner"]
    assert len(kinds["PodDisruptionBudget"]) == 6 and len(kinds["NetworkPolicy"]) == 6 and len(kinds["Service"]) == 6
    assert kinds["Secret"] == ["hzr-hanzo-registry"]
    for d in (d for d in docs if d["kind"] == "Deployment"):
        container = d["spec"]["template"]["spec"]["containers"][0]
        name = d["metadata"]["labels"]["app.kubernetes.io/component"]
        assert container["args"][-1] == name
        port = "http" if name == "distribution" else "ops"
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_full_values_ingress_existing_secret_and_monitoring() -> None:
    docs = render("full")
    by_kind = {d["kind"]: d for d in docs}
    assert "Secret" not in by_kind  # existingSecret
    ingress = by_kind["Ingress"]
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 900
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for d in docs if d["kind"] == "Deployment"
            for e in d["spec"]["template"]["spec"]["containers"][0]["env"] if "valueFrom" in e]
    assert refs and set(refs) == {"hanzo-registry-credentials"}
    rules = by_kind["PrometheusRule"]["spec"]["groups"][0]["rules"]
    assert {r["alert"] for r in rules} >= {"HanzoRegistryConsumerLag", "HanzoRegistryWebhookDeliveriesFailing"}
    assert {e["port"] for e in by_kind["ServiceMonitor"]["spec"]["endpoints"]} == {"http", "ops"}
    assert not any(d["metadata"]["name"].endswith("-replicator") for d in docs if d["kind"] == "Deployment")


@pytest.mark.parametrize("values", sorted(VALUES))
def test_rendered_settings_load(values: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each Deployment's settings (the ConfigMap's file plus its literal environment) are valid Settings."""
    from services.core.settings import load_settings

    docs = render(values)
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(config)
    services = {"distribution", "scanner", "signer", "gc", "replicator", "webhooks"}
    for d in docs:
        if d["kind"] != "Deployment" or d["metadata"]["labels"]["app.kubernetes.io/component"] not in services:
            continue
        env = d["spec"]["template"]["spec"]["containers"][0]["env"]
        with monkeypatch.context() as m:
            for e in env:
                if "value" in e:
                    m.setenv(e["name"], e["value"])
            settings = load_settings(path)
        assert settings.metadata.kind == "mongo" and settings.events.kind == "kafka"
        assert settings.storage.blobs.kind == "s3" and settings.server.ops_addr == "0.0.0.0:9100"


def test_values_schema_is_fresh() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "helm_schema.py"), "--check"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr


def test_schema_refuses_unknown_settings() -> None:
    done = subprocess.run([infra("HANZO_TOOL_HELM"), "template", "hzr", str(CHART), "--set",
                           "config.storage.blobs.bukcet=x"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "bukcet" in done.stderr


# deploy/docker-compose.yml: the same services and settings on a laptop


def _compose() -> dict[str, Any]:
    import re

    text = (ROOT / "deploy" / "docker-compose.yml").read_text()
    # Compose's own interpolation: ${VAR:-default} (unset here) and $$ for a literal $.
    text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text).replace("$$", "$")
    doc = yaml.safe_load(text)  # merge keys (<<: *registry) resolved, as Compose does
    return {k: v for k, v in doc.items() if not k.startswith("x-")}


def test_compose_file_follows_the_compose_spec() -> None:
    import json

    from compose_spec import PyCompose

    doc = _compose()
    compose = PyCompose.from_json(json.dumps(doc))
    assert compose.validate() is None  # type: ignore[func-returns-value]
    assert set(compose.service_names()) == {"distribution", "scanner", "signer", "gc", "replicator", "webhooks",
                                            "kafka", "mongodb", "minio"}
    broken = json.loads(json.dumps(doc))
    broken["services"]["kafka"]["healthcheck"]["tset"] = broken["services"]["kafka"]["healthcheck"].pop("test")
    with pytest.raises(ValueError, match="tset"):
        PyCompose.from_json(json.dumps(broken))


def test_compose_services_run_every_command_with_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.cli.main import SERVICES
    from services.core.settings import load_settings

    services = _compose()["services"]
    commands = {name: s["command"] for name, s in services.items() if "command" in s and "build" in s}
    assert {c[0] for c in commands.values()} == set(SERVICES)
    for name in commands:
        with monkeypatch.context() as m:
            for key, value in services[name]["environment"].items():
                assert key.startswith("HANZO_REGISTRY_"), key
                m.setenv(key, str(value))
            settings = load_settings()
        assert (settings.metadata.kind, settings.events.kind, settings.storage.blobs.kind) == ("mongo", "kafka", "s3")
        assert set(services[name]["depends_on"]) == {"kafka", "mongodb", "minio"}
