"""The one settings model of the server.

Every knob is read here, from the environment (prefix ``MCP_``; the HTTP port also from ``PORT``),
and nowhere else: the rest of the code receives a ``Settings`` object. Config files and env vars
hold addresses and names only; secret values come from Vault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from server.principal import Principal
from server.settings_vault import FromVault, VaultSettingsSource, active_vault_reader


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MCP_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    environment: Literal["development", "production"] = "development"
    server_name: str = "mcp-server-template"

    # --- transport and HTTP edge -------------------------------------------------------------
    transport: Literal["http", "stdio"] = "http"
    host: str = "127.0.0.1"
    port: int = Field(
        default=8000, ge=0, le=65535, validation_alias=AliasChoices("PORT", "MCP_PORT")
    )
    path: str = "/mcp"
    public_base_url: str | None = Field(
        default=None,
        description="Canonical URL clients use to reach this server (defaults to http://host:port).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host headers accepted besides loopback (DNS-rebinding guard).",
    )
    allowed_origins: list[str] = Field(
        default_factory=list, description="Browser origins accepted besides same-origin."
    )
    max_body_bytes: int = Field(default=256 * 1024, gt=0)
    max_json_depth: int = Field(default=32, gt=1)

    # --- authentication (bearer JWTs) ----------------------------------------------------------
    auth_jwks_url: str | None = None
    auth_issuer: str | None = None
    auth_audience: str = "mcp-server-template"
    auth_algorithm: Literal["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"] = "RS256"
    auth_clock_skew_seconds: int = Field(default=30, ge=0, le=300)
    authorization_servers: list[str] = Field(
        default_factory=list,
        description="Advertised in protected-resource metadata; defaults to the issuer.",
    )

    # stdio has no bearer token: the principal must be configured explicitly or every
    # operation is denied.
    stdio_principal: Principal | None = None

    # Per-principal token bucket in front of all authorization work; 0 turns it off.
    rate_limit_per_second: float = Field(default=20.0, ge=0)
    rate_limit_burst: int = Field(default=40, ge=1)

    # --- Cerbos PDP -------------------------------------------------------------------------------
    pdp_address: str = "127.0.0.1:3593"
    pdp_timeout_seconds: float = Field(default=0.5, gt=0, le=5)
    pdp_tls_ca_file: Path | None = None
    # Must not exceed the PDP's server.requestLimits.maxResourcesPerRequest.
    pdp_max_resources_per_request: int = Field(default=200, ge=1, le=10_000)

    # --- development helpers ----------------------------------------------------------------
    dev_issuer_dir: Path = Path(".dev/issuer")

    # --- store -------------------------------------------------------------------------------
    database_url: str = "sqlite+aiosqlite:///.dev/data/template.db"
    seed_demo_data: bool = True

    # --- Vault (or OpenBao): addresses, names and file locations only -------------------------
    vault_address: str = "http://127.0.0.1:8200"
    vault_timeout_seconds: float = Field(default=2.0, gt=0, le=5)
    vault_tls_verify: bool = True
    vault_ca_file: Path | None = None
    # The bootstrap credential is delivered as files, never as config or env values. "approle":
    # a role id and a response-wrapped secret id (unwrapped once, then the file is deleted);
    # "token_file": a token file kept fresh by an agent (re-read when the token expires);
    # "jwt": a JWT file, e.g. a projected Kubernetes service-account token, re-read on every login
    # at auth/<vault_jwt_mount>/login (Vault's kubernetes and jwt auth methods alike).
    vault_login: Literal["approle", "token_file", "jwt"] = "approle"
    vault_approle_mount: str = "approle"
    vault_approle_role: str = "mcp-server"
    vault_role_id_file: Path = Path(".dev/vault/role-id")
    vault_wrapped_secret_id_file: Path = Path(".dev/vault/secret-id.wrapped")
    vault_token_file: Path | None = None
    vault_jwt_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    vault_jwt_mount: str = Field(
        default="kubernetes", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"
    )
    vault_jwt_role: str = Field(default="mcp-server", min_length=1)
    # Identity X is minted through the token role "<prefix>X" and holds only the policy "<prefix>X".
    vault_role_prefix: str = "mcp-"
    vault_tool_identities: list[str] = Field(default_factory=lambda: ["tickets", "accounts"])
    vault_tool_token_ttl_seconds: int = Field(default=300, ge=2, le=3600)
    # Upper bound for caching a KV secret; it never outlives the token that read it.
    vault_secret_cache_seconds: int = Field(default=300, ge=0, le=3600)
    vault_kv_mount: str = "secret"
    vault_transit_mount: str = "transit"

    # --- settings-level secrets: values come from Vault (see server/settings_vault.py) ----------
    database_password: Annotated[SecretStr | None, FromVault("mcp/server", "database_password")] = (
        Field(default=None, description="Password for MCP_DATABASE_URL's user (not for SQLite).")
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The first source wins. Vault first, for fields marked FromVault only: a stale argument
        # or variable cannot shadow a rotated secret (see server/settings_vault.py).
        vault = VaultSettingsSource(settings_cls, active_vault_reader())
        return vault, init_settings, env_settings, dotenv_settings, file_secret_settings

    # --- telemetry (OpenTelemetry traces) -----------------------------------------------------
    # "none": no SDK, spans are no-ops (trace context still reaches the PDP); "console": spans
    # printed to stderr (development); "otlp": batched export to a collector at otel_endpoint.
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otel_endpoint: str | None = Field(
        default=None,
        description="OTLP collector base URL, e.g. http://127.0.0.1:4317 (grpc) or "
        "http://127.0.0.1:4318 (http/protobuf).",
    )
    otel_protocol: Literal["grpc", "http/protobuf"] = "grpc"
    otel_service_name: str | None = Field(
        default=None, description="service.name of the spans; defaults to server_name."
    )
    service_version: str | None = Field(
        default=None, description="service.version of the spans; defaults to the package version."
    )
    # An unreachable collector must cost requests nothing: spans wait in a bounded queue
    # (oldest dropped when full) and each export gives up after this timeout.
    otel_export_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    otel_max_queue_size: int = Field(default=2048, ge=1, le=100_000)

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("path must start with '/'")
        return value.rstrip("/") or "/"

    @model_validator(mode="after")
    def _http_needs_an_issuer(self) -> Settings:
        if self.transport == "http" and not (self.auth_jwks_url and self.auth_issuer):
            raise ValueError(
                "HTTP transport needs MCP_AUTH_JWKS_URL and MCP_AUTH_ISSUER: "
                "every HTTP request is authenticated"
            )
        return self

    @model_validator(mode="after")
    def _token_file_when_chosen(self) -> Settings:
        if self.vault_login == "token_file" and self.vault_token_file is None:
            raise ValueError("MCP_VAULT_LOGIN=token_file needs MCP_VAULT_TOKEN_FILE")
        return self

    @model_validator(mode="after")
    def _otlp_needs_an_endpoint(self) -> Settings:
        if self.otel_exporter == "otlp":
            url = urlsplit(self.otel_endpoint or "")
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ValueError(
                    "MCP_OTEL_EXPORTER=otlp needs MCP_OTEL_ENDPOINT, an http(s):// collector URL"
                )
        return self

    @property
    def otel_traces_endpoint(self) -> str | None:
        """Where trace exports go: the base URL for gRPC, plus ``/v1/traces`` for HTTP.

        The same value is handed to the PDP (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), whose
        exporter follows the same convention.
        """
        if not self.otel_endpoint:
            return None
        endpoint = self.otel_endpoint.rstrip("/")
        if self.otel_protocol == "http/protobuf" and urlsplit(endpoint).path in ("", "/"):
            endpoint += "/v1/traces"
        return endpoint

    @property
    def base_url(self) -> str:
        return self.public_base_url or f"http://{self.host}:{self.port}"

    @property
    def resource_url(self) -> str:
        """The canonical resource URI tokens are issued for (RFC 9728)."""
        return self.base_url.rstrip("/") + self.path
