"""One typed settings object for every service: YAML file (`--config`) + HANZO_REGISTRY_* environment.

Environment variables override the file; nested fields use `__`, e.g.
`HANZO_REGISTRY_METADATA__KIND=mongo`, `HANZO_REGISTRY_METADATA__URI=mongodb://...`.
Backends are chosen by a `kind` discriminator and validated at start-up.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from services.core.policy.document import PolicyDocument


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_addr(value: str) -> str:
    """`value` if it is host:port (an IPv6 host in brackets); else a ValueError that shows the fix."""
    host, sep, port = value.rpartition(":")
    example = "e.g. 127.0.0.1:5000, 0.0.0.0:5000 or [::1]:5000"
    if "://" in value or "/" in value:
        raise ValueError(f"{value!r} must be host:port without a scheme or path ({example})")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port with a port from 0 to 65535 ({example})")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError(f"{value!r}: write an IPv6 host in brackets ({example})")
    if any(c.isspace() for c in host):
        raise ValueError(f"{value!r}: the host has white space in it ({example})")
    return value


class FilesystemBlobSettings(_Section):
    kind: Literal["filesystem"] = "filesystem"
    root: Path | None = Field(None, description="Blob directory; default <data_dir>/blobs")


class S3BlobSettings(_Section):
    kind: Literal["s3"]
    endpoint: str = Field(description="host:port of the S3 API")
    bucket: str = Field("hanzo-registry", description="Bucket holding blobs and upload sessions")
    access_key: str = Field("", description="S3 access key")
    secret_key: SecretStr = Field(SecretStr(""), description="S3 secret key")
    region: str = Field("us-east-1", description="S3 region (signing)")
    secure: bool = Field(False, description="Use HTTPS to reach S3")
    prefix: str = Field("", description="Key prefix inside the bucket")
    part_size: int = Field(16 * 1024 * 1024, ge=5 * 1024 * 1024, description="Multipart part size in bytes")
    connect_timeout_seconds: float = Field(
        2.0, gt=0, le=60, description="Connecting to S3 fails after this long (an unreachable S3 is a fast 503)"
    )
    read_timeout_seconds: float = Field(
        120.0, gt=0, description="A call fails when S3 sends nothing for this long (a long transfer is not cut)"
    )
    retries: int = Field(
        2, ge=0, le=10, description="Retries of a failed S3 call (connection errors, 5xx), with a short backoff"
    )
    control_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=120,
        description="Deadline of the small control calls (upload session records and markers, HEADs, starting "
        "a multipart upload): an S3 that takes no writes (SeaweedFS for ~15 s after a restart) is a 503 "
        "after this long, not a request held for read_timeout_seconds; blob transfers are not affected",
    )


BlobSettings = Annotated[FilesystemBlobSettings | S3BlobSettings, Field(discriminator="kind")]


class StorageSettings(_Section):
    blobs: BlobSettings = Field(default_factory=FilesystemBlobSettings)
    redirect: bool = Field(False, description="Answer blob GETs with a redirect to a presigned URL (S3)")
    redirect_expiry_seconds: int = Field(600, ge=30, le=7 * 24 * 3600, description="Lifetime of presigned URLs")


class SqliteMetadataSettings(_Section):
    kind: Literal["sqlite"] = "sqlite"
    path: Path | None = Field(None, description="SQLite file; default <data_dir>/metadata.db")


class MongoMetadataSettings(_Section):
    kind: Literal["mongo"]
    uri: SecretStr = Field(SecretStr("mongodb://127.0.0.1:27017"), description="MongoDB connection string")
    database: str = Field("hanzo_registry", description="Database name")
    max_pool_size: int = Field(
        32, ge=1, le=1000,
        description="Connections to MongoDB: commands in flight at once (reads never queue behind a write's lock)",
    )
    server_selection_timeout_seconds: float = Field(
        2.0, gt=0, le=60, description="A command fails when no MongoDB server is reachable for this long (a fast 503)"
    )
    connect_timeout_seconds: float = Field(
        2.0, gt=0, le=60, description="Opening a connection to MongoDB fails after this long"
    )
    socket_timeout_seconds: float = Field(
        30.0, gt=0, description="A command fails when MongoDB does not answer for this long"
    )


MetadataSettings = Annotated[SqliteMetadataSettings | MongoMetadataSettings, Field(discriminator="kind")]


class LocalEventSettings(_Section):
    kind: Literal["local"] = "local"
    path: Path | None = Field(None, description="SQLite event log; default <data_dir>/events.db")
    retention_hours: float = Field(168.0, gt=0, description="Records older than this are deleted (like Kafka's)")


class KafkaEventSettings(_Section):
    kind: Literal["kafka"]
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka brokers, comma-separated host:port")
    client_id: str = Field("hanzo-registry", description="Kafka client id")
    request_timeout_seconds: float = Field(
        2.0, gt=0, le=300,
        description="Connecting and one producer request (publish, readiness) fail after this long (the outbox relay "
        "retries; consumers and topic creation keep longer timeouts)",
    )


EventSettings = Annotated[LocalEventSettings | KafkaEventSettings, Field(discriminator="kind")]


class TopicSettings(_Section):
    manifests: str = Field("registry.manifests", description="Manifest pushed/deleted events")
    tags: str = Field("registry.tags", description="Tag updated/deleted events")
    blobs: str = Field("registry.blobs", description="Blob deleted events")
    scans: str = Field("registry.scans", description="Scan completed events")
    signatures: str = Field("registry.signatures", description="Signature verified events")
    replication: str = Field("registry.replication", description="Replication completed events")
    gc: str = Field("registry.gc", description="GC run completed events")
    audit: str = Field("registry.audit", description="Audit entries")
    dead_letter_suffix: str = Field(".dlq", description="Dead-letter topic = topic + this suffix")


class ConsumerSettings(_Section):
    max_attempts: int = Field(5, ge=1, description="Failures before a record goes to the dead-letter topic")
    backoff_initial_seconds: float = Field(0.2, gt=0, description="First retry delay of a failing record")
    backoff_max_seconds: float = Field(30.0, gt=0, description="Retry delay cap (doubling backoff)")
    dedupe_days: int = Field(
        7, ge=1, description="Days a handled event id is remembered (longer than any redelivery can take)"
    )


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class TelemetrySettings(_Section):
    traces_exporter: Literal["none", "otlp", "console"] = Field(
        "none", description="Where spans go: none, otlp, console"
    )
    otlp_endpoint: str = Field("http://127.0.0.1:4317", description="OTLP gRPC collector")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    log_format: Literal["auto", "json", "console", "text"] = Field(
        "auto",
        description="auto: console lines (coloured) on a terminal, else JSON lines (with trace ids); "
        "json; console (text is the same)",
    )
    access_log: bool = Field(
        True, description="One INFO line per HTTP request (method, path, status, bytes, duration, user, trace id)"
    )
    library_log_level: str = Field(
        "INFO", description="Most verbose level for client libraries' loggers (pymongo, aiokafka, minio, urllib3)"
    )

    @field_validator("log_level", "library_log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"unknown log level {value!r}: use one of {', '.join(_LOG_LEVELS)}")
        return level


class TagRule(_Section):
    """Tags matching `pattern` (a regular expression) in namespaces matching `namespace` are immutable."""

    namespace: str = Field("*", description="Namespace glob (fnmatch); * for every namespace")
    pattern: str
    immutable: bool = True
    name: str = ""


def _default_tag_rules() -> list[TagRule]:
    return [
        TagRule(
            name="semver",
            pattern=r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
            r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$",
        ),
        TagRule(name="git-sha", pattern=r"^sha-[0-9a-f]{7,40}$"),
    ]


class RegistrySettings(_Section):
    max_manifest_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest manifest accepted (413 above)")
    upload_chunk_min_bytes: int = Field(0, ge=0, description="Sent as OCI-Chunk-Min-Length when > 0")
    upload_expiry_seconds: int = Field(24 * 3600, ge=60, description="Idle upload sessions older than this are removed")
    delete_enabled: bool = Field(True, description="Allow manifest, tag and blob DELETE (405 UNSUPPORTED otherwise)")
    tag_rules: list[TagRule] = Field(
        default_factory=_default_tag_rules,
        description="Immutable-tag rules, first match wins; default: semver and sha-<hex> tags are immutable",
    )
    public_base_url: str = Field("", description="External URL of the registry; default: from the request")
    pull_gate_cache_seconds: float = Field(
        5.0, ge=0, le=3600,
        description="How long a pull gate's decision (and a repository's effective policy) is reused; other "
        "replicas see a policy, scan or signature change within this time",
    )
    tag_list_cache_seconds: float = Field(
        10.0, ge=0, le=3600,
        description="How long a repository's tag names are reused for tags/list (0: never). This replica's "
        "tag pushes and deletes refresh them at once, other replicas' through their tag events; this bounds "
        "how late another replica's change shows when events are delayed",
    )


class VulnDbSettings(_Section):
    sources: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="URLs of OSV exports (an `all.zip` per ecosystem, or a JSON array) the scanner imports on a "
        "schedule (comma-separated in the environment)",
    )
    sync_interval_seconds: float = Field(86400.0, ge=60, description="Time between scheduled imports")
    max_download_bytes: int = Field(1024**3, ge=1024, description="Largest OSV export downloaded")

    @field_validator("sources", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


class ScannerSettings(_Section):
    scan_timeout_seconds: float = Field(900.0, gt=0, description="A scan that takes longer fails")
    max_layer_bytes: int = Field(16 * 1024**3, ge=1024, description="Decompressed bytes of one layer")
    max_files: int = Field(1_000_000, ge=100, description="Files of one image, all layers together")
    max_model_file_bytes: int = Field(
        4 * 1024**3, ge=1024, description="Largest pickle-based model file scanned for dangerous code"
    )
    rematch_interval_seconds: float = Field(
        5.0, gt=0, description="How often the scanner looks for a changed vulnerability database and re-scan requests"
    )
    sbom: bool = Field(True, description="Push a CycloneDX SBOM as a referrer of every scanned image")
    vulndb: VulnDbSettings = Field(default_factory=VulnDbSettings)


class PolicySettings(_Section):
    default: PolicyDocument = Field(
        default_factory=PolicyDocument,
        description="Registry-wide policy under every namespace's and repository's (merged field by field)",
    )


def _one_or_list(value: Any) -> Any:
    """One string, a JSON list, or a comma-separated string (the environment's spellings) as a list."""
    return _cidrs(value)


class OidcSettings(_Section):
    """External identity through an OpenID Connect provider (Hanzo IAM or any other): giving `issuer`
    turns it on. The issuer comes from this file, so it is trusted (it may be on loopback)."""

    issuer: str = Field(
        "", description="OIDC issuer URL (discovery at <issuer>/.well-known/openid-configuration); empty: off"
    )
    audience: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted `aud` values of IdP tokens, one or a list (comma-separated in the environment); "
        "default: client_id",
    )
    username_claim: str = Field(
        "preferred_username", description="Claim naming the registry user (falls back to `sub`)"
    )
    groups_claim: str = Field("groups", description="Claim listing the user's groups (each becomes a team)")
    admin_groups: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Groups whose members are registry admins (comma-separated in the environment)",
    )
    client_id: str = Field("", description="OAuth2 client id of the registry (browser login of the console)")
    client_secret: SecretStr | None = Field(None, description="OAuth2 client secret of client_id")
    jwks_refetch_seconds: float = Field(
        10.0, ge=0, description="Least time between two JWKS fetches for a token signed by an unknown key"
    )
    session_ttl_seconds: int = Field(
        3600, ge=60, le=24 * 3600, description="Lifetime of a console session made by the browser login"
    )
    key_signin_max_age_seconds: float = Field(
        30 * 24 * 3600, ge=0,
        description="An external user's API keys and refresh tokens stop working once the user has not signed in "
        "through the IdP (an IdP token used here, or the browser login) for this long, and work again after the "
        "next sign-in: someone removed at the IdP loses the registry too. 0: keys never lapse",
    )

    @field_validator("audience", "admin_groups", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _one_or_list(value)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError(f"{value[:200]!r} is not an http(s) URL without query or fragment")
        return value

    @model_validator(mode="after")
    def _complete(self) -> OidcSettings:
        if self.issuer and not self.audiences:
            raise ValueError("auth.oidc.issuer needs auth.oidc.audience or auth.oidc.client_id (the tokens' `aud`)")
        if self.client_secret is not None and not self.client_id:
            raise ValueError("auth.oidc.client_secret needs auth.oidc.client_id")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)

    @property
    def audiences(self) -> tuple[str, ...]:
        """The accepted `aud` values: `audience`, else the client id."""
        return tuple(self.audience) or ((self.client_id,) if self.client_id else ())


class GcSettings(_Section):
    enabled: bool = Field(True, description="Run garbage collection on `schedule`")
    schedule: str = Field("0 3 * * *", description="When GC runs: cron (minute hour day month weekday), UTC")
    blob_grace_seconds: int = Field(
        3600, ge=0, description="Blobs no kept manifest references are deleted only once every link is this old"
    )
    settle_seconds: float = Field(
        5.0, ge=0, description="Between marking and deleting, how long GC waits for pushes in flight to show up"
    )
    incremental_interval_seconds: float = Field(
        300.0,
        ge=0,
        description="How often GC looks for candidates (manifests and blobs that tag moves and deletes may have "
        "orphaned) and, when some are due, runs incrementally over them alone; 0: only full runs on `schedule`",
    )
    concurrency: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Metadata commands a run keeps in flight; unset: 2 on SQLite (pushes share its one "
        "connection), 32 on MongoDB (a run there is round trips)",
    )
    yield_ratio: float | None = Field(
        None,
        ge=0,
        le=100,
        description="Seconds a run pauses per second of its work while requests are served (by the same process in "
        "`serve`; by any replica, from their activity beacons, on MongoDB), so they get turns; none while none "
        "are; unset: 3.0 on SQLite (GC takes at most a quarter of the process while requests come), 1.0 on "
        "MongoDB (where a run then also keeps only 1 command in flight)",
    )
    grpc_addr: str | None = Field(
        None,
        description="host:port of the gc service's gRPC (its server.grpc_addr), which the distribution service "
        "calls for /v1/registry/admin/gc and /admin/storage in the distributed assembly; unset: only a gc "
        "service in the same process (`serve`) answers them",
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        from services.core.cron import CronExpression

        CronExpression.parse(value)
        return value

    @field_validator("grpc_addr")
    @classmethod
    def _grpc_addr(cls, value: str | None) -> str | None:
        return check_addr(value) if value else None


class ReplicationTargetSettings(_Section):
    url: str = Field(description="The target registry, e.g. https://eu.example (http:// for plain HTTP)")
    username: str = Field("", description="User name at the target (empty: anonymous)")
    password: SecretStr = Field(SecretStr(""), description="Password or API key at the target")
    insecure: bool = Field(False, description="Skip TLS verification of the target")
    ca_file: Path | None = Field(None, description="PEM CA bundle to trust for the target")


class ReplicationRuleSettings(_Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", description="Rule name")
    repositories: str = Field("**", description="Glob of source repositories (`*` within a path segment, `**` "
                              "across segments)")
    tags: str = Field("*", description="Glob of tags to replicate")
    target: ReplicationTargetSettings
    destination_prefix: str = Field("", description="Prepended to the repository name at the target")
    mode: Literal["event", "periodic"] = Field("event", description="event: on every push; periodic: on `schedule`")
    schedule: str | None = Field(None, description="Cron (UTC) of a periodic rule's full sync")
    delete: bool = Field(False, description="Propagate deletions of manifests and tags")
    enabled: bool = Field(True, description="Whether the rule replicates")
    include_referrers: bool = Field(True, description="Carry signatures, SBOMs and attestations along")

    @model_validator(mode="after")
    def _schedule(self) -> ReplicationRuleSettings:
        from services.core.cron import CronExpression

        if self.mode == "periodic" and not self.schedule:
            raise ValueError("a periodic rule needs a schedule (cron, UTC)")
        if self.schedule:
            CronExpression.parse(self.schedule)
        return self


class ReplicationSettings(_Section):
    rules: list[ReplicationRuleSettings] = Field(
        default_factory=list, description="Rules from the settings file (read-only over the API)"
    )
    concurrency: int = Field(8, ge=1, le=256, description="Repositories replicated at once per replicator")
    blob_concurrency: int = Field(4, ge=1, le=64, description="Blobs of one image copied at once")
    poll_interval_seconds: float = Field(1.0, gt=0, description="How often the queue is looked at for work "
                                         "queued elsewhere (resyncs, retries)")
    backoff_initial_seconds: float = Field(1.0, gt=0, description="First retry delay of a failing copy (doubling)")
    backoff_max_seconds: float = Field(60.0, gt=0, description="Retry delay cap; a failing copy is retried forever")
    lagging_after_seconds: float = Field(60.0, gt=0, description="A rule whose oldest queued work is older is "
                                         "`lagging`")
    chunked_above_bytes: int = Field(512 * 1024 * 1024, ge=1024 * 1024, description="Blobs larger than this are "
                                     "pushed in chunks (PATCH, resumable), smaller ones in one streamed PUT (one "
                                     "fsync at the target, not one per chunk)")
    chunk_bytes: int = Field(16 * 1024 * 1024, ge=1024 * 1024, le=512 * 1024 * 1024,
                             description="Size of each PATCH of a chunked push")


WEEK_SECONDS = 7 * 24 * 3600


class ProxyRemote(_Section):
    name: str = Field(..., pattern=r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$", max_length=64,
                      description="The remote's path component: cache/<name>/<path> pulls <path> from it")
    url: str = Field(..., description="The upstream registry, http(s)://host[:port] (e.g. https://ghcr.io)")
    username: str | None = Field(None, description="Upstream user (anonymous when unset)")
    password: SecretStr | None = Field(None, description="Upstream password or token; never returned or logged")
    ttl: float = Field(float(WEEK_SECONDS), ge=0,
                       description="Seconds a cached tag -> digest answer is trusted before a HEAD revalidates it")
    insecure: bool = Field(False, description="Skip TLS verification of the upstream")
    ca_file: str | None = Field(None, description="A CA bundle to trust for the upstream, besides the system's")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        from services.core.ssrf import Trust, UrlPolicy, UrlRefusedError, check_url_syntax

        try:
            check_url_syntax(value, UrlPolicy(Trust.TRUSTED))
        except UrlRefusedError as exc:
            raise ValueError(str(exc)) from None
        parts = urlsplit(value)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("the URL names the registry only: http(s)://host[:port], no path")
        return value.rstrip("/")


def _default_remotes() -> list[ProxyRemote]:
    return [ProxyRemote(name="docker-hub", url="https://registry-1.docker.io")]


class ProxySettings(_Section):
    enabled: bool = Field(True, description="Serve the pull-through cache under `namespace`")
    namespace: str = Field("cache", pattern=r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$",
                           description="The namespace of cached repositories (pushes to it are refused)")
    remotes: list[ProxyRemote] = Field(
        default_factory=_default_remotes,
        description="Upstreams, {name, url, username, password, ttl}; replaced by a list PUT to "
        "/v1/registry/admin/proxy/remotes",
    )
    default_remote: str = Field(
        "docker-hub", description="Serves cache/<path> when <path>'s first component names no remote "
        "(Docker Hub's library/ convention for one-component names)"
    )
    retention: float = Field(float(WEEK_SECONDS), gt=0,
                             description="Seconds a cached manifest is kept after its last pull; GC collects it then")
    spool_dir: str | None = Field(
        None, description="Where a cold pull into an S3 store spools ahead of the upload (one unnamed file per "
        "blob in flight, as big as the blob); unset: the system's temporary directory. Keep it off tmpfs for big "
        "layers")
    timeout_seconds: float = Field(
        10.0, gt=0, le=600, description="Longest wait for an upstream's answer (or its next bytes) before a "
        "cached copy is served stale, or the pull fails with 502"
    )
    access_flush_seconds: float = Field(5.0, gt=0, le=600,
                                        description="Last-pull times are written in batches this often")

    @model_validator(mode="after")
    def _unique(self) -> ProxySettings:
        names = [r.name for r in self.remotes]
        if len(names) != len(set(names)):
            raise ValueError("proxy.remotes: remote names must be unique")
        return self


class AuthSettings(_Section):
    mode: Literal["token", "none"] = Field(
        "token", description="token: Docker token auth, API keys, roles; none: open to anyone (local experiments)"
    )
    service: str = Field("hanzo-registry", description="Token audience (the `service` of the challenge)")
    issuer: str = Field("hanzo-registry", description="Token issuer")
    token_ttl_seconds: int = Field(300, ge=60, le=24 * 3600, description="Lifetime of issued tokens")
    refresh_token_ttl_seconds: int = Field(
        30 * 24 * 3600, ge=300, description="Lifetime of offline (refresh) tokens, e.g. docker login's"
    )
    key_rotation_seconds: int = Field(
        7 * 24 * 3600, ge=60, description="A new token signing key after this; old keys verify until their tokens end"
    )
    login_failure_limit: int = Field(10, ge=1, description="Failed logins per source address before 429")
    login_failure_window_seconds: float = Field(60.0, gt=0, description="Window of login_failure_limit")
    bootstrap_admin_key: SecretStr | None = Field(
        None, description="API key (hzr_<prefix>_<secret>) of the first admin; else random, in <data_dir>"
    )
    oidc: OidcSettings = Field(default_factory=OidcSettings)

    @model_validator(mode="after")
    def _distinct_issuers(self) -> AuthSettings:
        # Tokens are routed by their `iss`: the registry's own must not be the identity provider's.
        if self.oidc.issuer and self.oidc.issuer == self.issuer:
            raise ValueError("auth.oidc.issuer must differ from auth.issuer (the registry's own token issuer)")
        return self

    @field_validator("bootstrap_admin_key")
    @classmethod
    def _key_shape(cls, value: SecretStr | None) -> SecretStr | None:
        shape = r"hzr_[a-z0-9]{8,32}_[A-Za-z0-9_\-]{32,128}"
        if value is not None and not re.fullmatch(shape, value.get_secret_value()):
            raise ValueError(
                "must look like hzr_<8-32 of [a-z0-9]>_<32-128 of [A-Za-z0-9_-]>, e.g. "
                "hzr_$(openssl rand -hex 6)_$(openssl rand -hex 32)"
            )
        return value


class TlsSettings(_Section):
    cert_file: Path | None = Field(
        None,
        description="PEM certificate chain (leaf first) to serve HTTPS on `addr`; re-read on SIGHUP and when "
        "the file changes",
    )
    key_file: Path | None = Field(None, description="PEM private key of cert_file")
    key_password: SecretStr | None = Field(None, description="Password of an encrypted key_file")
    client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: every client must present a certificate it signed (mutual TLS)"
    )
    reload_interval_seconds: float = Field(
        5.0, gt=0, description="How often the TLS files' modification times are checked"
    )

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both server.tls.cert_file and server.tls.key_file (or neither, for plain HTTP)")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("server.tls.client_ca_file needs server.tls.cert_file and key_file (mutual TLS is TLS)")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


def _cidrs(value: Any) -> Any:
    """A JSON list or a comma-separated string (the environment's spellings) as a list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class SignerSettings(_Section):
    master_key: SecretStr | None = Field(
        None, description="Encrypts managed signing keys at rest (at least 16 characters, e.g. `openssl rand "
        "-hex 32`); without it no key can be created or used"
    )
    sigstore_roots: Path | None = Field(
        None, description="PEM file of the CA certificates (e.g. Fulcio's root and intermediate) trusted for "
        "keyless cosign and Sigstore bundle signatures; identities come from the policy's signing.identities"
    )
    sigstore_trusted_root: Path | None = Field(
        None, description="A Sigstore trusted_root.json (cosign keeps the public instance's under "
        "~/.sigstore/root/): its certificate authorities add to sigstore_roots and its transparency logs' keys "
        "to rekor_public_keys"
    )
    rekor_public_keys: Path | None = Field(
        None, description="PEM file of the transparency logs' public keys (e.g. Rekor's) whose signed entry "
        "timestamps date keyless signatures; without one a keyless certificate is checked now, and the "
        "ten-minute Fulcio certificates have expired by then"
    )
    notation_trust_store: Path | None = Field(
        None, description="Notary trust store directory (x509/ca/<name>/*.pem, x509/signingAuthority/<name>/...)"
    )
    notation_trust_policy: Path | None = Field(
        None, description="Notary trust policy file (trustpolicy.json, version 1.0) for Notary signatures"
    )
    max_signature_bytes: int = Field(
        1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="Largest signature layer the signer reads"
    )


class WebhookSettings(_Section):
    allow_private_targets: bool = Field(
        False, description="Let namespace admins' webhooks reach loopback and private addresses (tests, closed "
        "networks); link-local and cloud metadata addresses stay refused"
    )
    timeout_seconds: float = Field(10.0, gt=0, le=300, description="One delivery attempt's time limit")
    retry_for_seconds: float = Field(
        24 * 3600.0, gt=0, description="A delivery that keeps failing (non-2xx, timeout) is retried this long"
    )
    backoff_initial_seconds: float = Field(10.0, gt=0, description="Delay before the first retry (doubling)")
    backoff_max_seconds: float = Field(3600.0, gt=0, description="Retry delay cap")
    poll_interval_seconds: float = Field(2.0, gt=0, description="How often the delivery queue is looked at")
    concurrency: int = Field(8, ge=1, le=256, description="Deliveries in flight at once per process")
    retention_days: int = Field(30, ge=1, description="Finished deliveries are kept (and listed) this long")


class ServerSettings(_Section):
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto",
        description="auto: asyncio with filesystem blobs (it serves them with sendfile(2)), else uvloop "
        "(less CPU per request and per proxied byte)",
    )
    grpc_addr: str = Field("127.0.0.1:0", description="gRPC listen address (port 0: any free port)")
    ops_addr: str = Field("127.0.0.1:0", description="/metrics /healthz /readyz of a headless service")
    shutdown_grace_seconds: float = Field(10.0, description="Time to finish in-flight work on SIGTERM")
    tls: TlsSettings = Field(default_factory=TlsSettings)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs of reverse proxies whose X-Forwarded-For/-Proto/-Host are believed "
        "(comma-separated in the environment)",
    )
    backend_wait_seconds: float = Field(
        15.0, ge=0, description="At start, how long to retry backends (S3, MongoDB, Kafka) that do not answer"
    )

    @field_validator("grpc_addr", "ops_addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        return check_addr(value)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _cidrs(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        networks = []
        for cidr in value:
            try:
                networks.append(str(ipaddress.ip_network(cidr, strict=False)))
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP network: write e.g. 10.0.0.0/8, 192.0.2.7 or ::1") from None
        return networks


class Settings(BaseSettings):
    """Every setting of every service. See the README's configuration reference."""

    model_config = SettingsConfigDict(env_prefix="HANZO_REGISTRY_", env_nested_delimiter="__", extra="forbid")

    addr: str = Field("127.0.0.1:5000", description="host:port the HTTP API listens on")
    data_dir: Path = Field(Path("var"), description="Root of the embedded assembly's data")
    storage: StorageSettings = Field(default_factory=StorageSettings)
    metadata: MetadataSettings = Field(default_factory=SqliteMetadataSettings)
    events: EventSettings = Field(default_factory=LocalEventSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    scanner: ScannerSettings = Field(default_factory=ScannerSettings)
    gc: GcSettings = Field(default_factory=GcSettings)
    replication: ReplicationSettings = Field(default_factory=ReplicationSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    signer: SignerSettings = Field(default_factory=SignerSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)

    @field_validator("addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        return check_addr(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file, which arrives as init kwargs.
        return env_settings, init_settings

    @property
    def host(self) -> str:
        return self.addr.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    @property
    def event_loop(self) -> Literal["asyncio", "uvloop"]:
        """The loop `server.event_loop` stands for: with filesystem blobs asyncio, whose sendfile(2)
        beats any copy; otherwise uvloop, whose transports cost less CPU per request and per byte."""
        if self.server.event_loop != "auto":
            return self.server.event_loop
        return "asyncio" if self.storage.blobs.kind == "filesystem" else "uvloop"


class SettingsError(Exception):
    """Configuration that cannot start a service; the message says what to fix."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (if any), apply the environment, validate. Raises SettingsError."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"cannot read config file {config_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"config file {config_file} must hold a mapping at the top level")
        data.update(loaded)
    data.update(overrides)
    # The name the product documents for the first admin's key, besides the nested settings name.
    legacy_key = os.environ.get("HANZO_REGISTRY_BOOTSTRAP_ADMIN_KEY")
    if legacy_key and not os.environ.get("HANZO_REGISTRY_AUTH__BOOTSTRAP_ADMIN_KEY"):
        data.setdefault("auth", {})
        if isinstance(data["auth"], dict):
            data["auth"] = {**data["auth"], "bootstrap_admin_key": legacy_key}
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = "; ".join(_problem(err["loc"], err["msg"], err["type"]) for err in exc.errors())
        raise SettingsError(f"invalid configuration: {problems}") from exc


def _nested(annotation: Any) -> list[type[BaseModel]]:
    from typing import Union, get_args, get_origin

    origin = get_origin(annotation)
    if origin is Annotated:
        return _nested(get_args(annotation)[0])
    if origin is Union or type(annotation).__name__ == "UnionType":
        return [m for a in get_args(annotation) for m in _nested(a)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def setting_name(loc: tuple[int | str, ...]) -> str:
    """`storage.blobs.endpoint (HANZO_REGISTRY_STORAGE__BLOBS__ENDPOINT)` for a validation error location
    (pydantic puts the backend's kind into the location of a discriminated section: left out here)."""
    names: list[str] = []
    models: list[type[BaseModel]] = [Settings]
    for part in loc:
        if not isinstance(part, str):
            names.append(str(part))
            models = []
            continue
        field = next((m.model_fields[part] for m in models if part in m.model_fields), None)
        if field is None:
            tagged = [m for m in models if "kind" in m.model_fields and m.model_fields["kind"].default == part]
            tagged += [
                m for m in models if "kind" in m.model_fields and part in str(m.model_fields["kind"].annotation)
            ]
            if tagged:
                models = tagged[:1]
                continue
            names.append(part)
            models = []
            continue
        names.append(part)
        models = _nested(field.annotation)
    if not names:
        return "settings"
    dotted = ".".join(names)
    return f"{dotted} (HANZO_REGISTRY_{'__'.join(names).upper()})"


def _problem(loc: tuple[int | str, ...], message: str, kind: str) -> str:
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, "kind")
    return f"{setting_name(loc)}: {message.removeprefix('Value error, ')}"
