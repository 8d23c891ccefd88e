"""One typed settings object for every service: YAML file (`--config`) + HANZO_REGISTRY_* environment.

Environment variables override the file; nested fields use `__`, e.g.
`HANZO_REGISTRY_METADATA__KIND=mongo`, `HANZO_REGISTRY_METADATA__URI=mongodb://...`.
Backends are chosen by a `kind` discriminator and validated at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FilesystemBlobSettings(_Section):
    kind: Literal["filesystem"] = "filesystem"
    root: Path | None = Field(None, description="Blob directory; default <data_dir>/blobs")


class S3BlobSettings(_Section):
    kind: Literal["s3"]
    endpoint: str = Field(description="host:port of the S3 API")
    bucket: str = "hanzo-registry"
    access_key: str = ""
    secret_key: SecretStr = SecretStr("")
    region: str = "us-east-1"
    secure: bool = Field(False, description="Use HTTPS to reach S3")
    prefix: str = Field("", description="Key prefix inside the bucket")
    part_size: int = Field(16 * 1024 * 1024, ge=5 * 1024 * 1024, description="Multipart part size in bytes")


BlobSettings = Annotated[FilesystemBlobSettings | S3BlobSettings, Field(discriminator="kind")]


class StorageSettings(_Section):
    blobs: BlobSettings = Field(default_factory=FilesystemBlobSettings)
    redirect: bool = Field(False, description="Answer blob GETs with a redirect to a presigned URL (S3)")
    redirect_expiry_seconds: int = Field(600, ge=30, le=7 * 24 * 3600)


class SqliteMetadataSettings(_Section):
    kind: Literal["sqlite"] = "sqlite"
    path: Path | None = Field(None, description="SQLite file; default <data_dir>/metadata.db")


class MongoMetadataSettings(_Section):
    kind: Literal["mongo"]
    uri: SecretStr = SecretStr("mongodb://127.0.0.1:27017")
    database: str = "hanzo_registry"


MetadataSettings = Annotated[SqliteMetadataSettings | MongoMetadataSettings, Field(discriminator="kind")]


class LocalEventSettings(_Section):
    kind: Literal["local"] = "local"
    path: Path | None = Field(None, description="SQLite event log; default <data_dir>/events.db")


class KafkaEventSettings(_Section):
    kind: Literal["kafka"]
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "hanzo-registry"


EventSettings = Annotated[LocalEventSettings | KafkaEventSettings, Field(discriminator="kind")]


class TopicSettings(_Section):
    manifests: str = "registry.manifests"
    tags: str = "registry.tags"
    blobs: str = "registry.blobs"
    scans: str = "registry.scans"
    signatures: str = "registry.signatures"
    replication: str = "registry.replication"
    gc: str = "registry.gc"
    audit: str = "registry.audit"
    dead_letter_suffix: str = ".dlq"


class ConsumerSettings(_Section):
    max_attempts: int = Field(5, ge=1, description="Failures before a record goes to the dead-letter topic")
    backoff_initial_seconds: float = Field(0.2, gt=0)
    backoff_max_seconds: float = Field(30.0, gt=0)


class TelemetrySettings(_Section):
    traces_exporter: Literal["none", "otlp", "console"] = "none"
    otlp_endpoint: str = "http://127.0.0.1:4317"
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"


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
    max_manifest_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    upload_chunk_min_bytes: int = Field(0, ge=0, description="Sent as OCI-Chunk-Min-Length when > 0")
    upload_expiry_seconds: int = Field(24 * 3600, ge=60)
    delete_enabled: bool = True
    tag_rules: list[TagRule] = Field(default_factory=_default_tag_rules)
    public_base_url: str = Field("", description="External URL of the registry; default: from the request")


class AuthSettings(_Section):
    mode: Literal["token", "none"] = Field("none", description="token: Docker token auth (coming); none: open")
    service: str = "hanzo-registry"
    issuer: str = "hanzo-registry"
    token_ttl_seconds: int = Field(300, ge=60)
    bootstrap_admin_key: SecretStr | None = None


class ServerSettings(_Section):
    grpc_addr: str = "127.0.0.1:0"
    ops_addr: str = Field("127.0.0.1:0", description="/metrics /healthz /readyz of a headless service")
    shutdown_grace_seconds: float = 10.0


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
    auth: AuthSettings = Field(default_factory=AuthSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)

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
        return self.addr.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])


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
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid configuration: {problems}") from exc
