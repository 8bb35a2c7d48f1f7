"""The one settings model of the server.

Every knob is read here, from the environment (prefix ``MCP_``; the HTTP port also from ``PORT``),
and nowhere else: the rest of the code receives a ``Settings`` object. Config files and env vars
hold addresses and names only; secret values come from Vault.
"""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from server.edge.principal import Principal
from server.vault.settings_source import FromVault, VaultSettingsSource, active_vault_reader


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MCP_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    environment: Literal["development", "production"] = Field(
        default="development",
        description="`production` turns on the production guard (no root token, no dev Vault, "
        "TLS to Vault, no placeholder secrets).",
    )
    server_name: str = Field(
        default="mcp-server-template", description="The server's name in MCP and in spans."
    )

    # --- transport and HTTP edge -------------------------------------------------------------
    transport: Literal["http", "stdio"] = Field(
        default="http", description="`http` (streamable HTTP) or `stdio`."
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(
        default=8000,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("PORT", "MCP_PORT"),
        description="HTTP port (also read from `PORT`).",
    )
    path: str = Field(default="/mcp", description="Path of the MCP endpoint.")
    gc_threshold: int = Field(
        default=50_000,
        ge=0,
        le=1_000_000,
        description="Allocations between two young-generation garbage collections of a served "
        "process (Python's default is 700, which cost ~20 % of the CPU per call); `0`: leave "
        "Python's default.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Server processes sharing the HTTP socket (one core each). Rate limits and "
        "the decision cache are per process; legacy-session (2025-11-25) clients need 1.",
    )
    public_base_url: str | None = Field(
        default=None,
        description="Canonical URL clients use to reach this server (defaults to http://host:port).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host headers accepted besides loopback (DNS-rebinding guard), JSON list.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins accepted besides the server's own, JSON list. A request "
        "with any other `Origin` gets 403, loopback origins on other ports included.",
    )
    max_body_bytes: int = Field(
        default=256 * 1024, gt=0, description="Largest request body accepted (413 beyond)."
    )
    max_json_depth: int = Field(
        default=32, gt=1, description="Deepest JSON nesting accepted (400 beyond)."
    )

    # --- authentication (bearer JWTs) ----------------------------------------------------------
    auth_jwks_url: str | None = Field(
        default=None, description="JWKS URL of your identity provider (required for HTTP)."
    )
    auth_issuer: str | None = Field(
        default=None, description="The `iss` tokens must carry (required for HTTP)."
    )
    auth_audience: str = Field(
        default="mcp-server-template", description="The `aud` tokens must carry."
    )
    auth_algorithm: Literal["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"] = Field(
        default="RS256", description="The only signing algorithm accepted."
    )
    auth_clock_skew_seconds: int = Field(
        default=30, ge=0, le=300, description="Leeway for `exp`, `nbf` and `iat`."
    )
    authorization_servers: list[str] = Field(
        default_factory=list,
        description="Advertised in protected-resource metadata; defaults to the issuer.",
    )
    # stdio has no bearer token: the principal must be configured explicitly or every
    # operation is denied.
    stdio_principal: Principal | None = Field(
        default=None,
        description='The caller on stdio, JSON, e.g. `{"id":"erin","roles":["auditor"],'
        '"department":"compliance"}`; unset: every operation is denied.',
    )
    rate_limit_per_second: float = Field(
        default=20.0,
        ge=0,
        description="Requests per second per principal, checked right after the token is "
        "verified and before the body is read or any MCP work (429 beyond; `0`: off).",
    )
    rate_limit_burst: int = Field(default=40, ge=1, description="Bucket size of that limit.")
    preauth_rate_limit_per_second: float = Field(
        default=20.0,
        ge=0,
        description="Requests per second per client address that do not authenticate, checked "
        "before any token verification (429 beyond; `0`: off). An authenticated request gives "
        "its share back. Keyed by the direct peer (see `MCP_TRUSTED_PROXIES`).",
    )
    preauth_rate_limit_burst: int = Field(
        default=40, ge=1, description="Bucket size of that limit."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Reverse proxies (IP addresses or CIDR networks, JSON list) whose "
        "`X-Forwarded-For`/`X-Forwarded-Proto` are believed: the client address is the "
        "rightmost one not listed. Empty: the direct peer is the client and forwarded headers "
        "are ignored.",
    )

    # --- Cerbos PDP -------------------------------------------------------------------------------
    pdp_address: str = Field(
        default="127.0.0.1:3593",
        description="Cerbos gRPC address (`host:port`, or `unix:/path` for a socket).",
    )
    pdp_timeout_seconds: float = Field(
        default=0.5, gt=0, le=5, description="Deadline of each PDP call; past it, deny."
    )
    pdp_tls_ca_file: Path | None = Field(
        default=None, description="CA bundle for TLS to the PDP (unset: plaintext)."
    )
    pdp_max_resources_per_request: int = Field(
        default=200,
        ge=1,
        le=10_000,
        description="Batch size; at most the PDP's `maxResourcesPerRequest`.",
    )
    authz_cache_seconds: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="How long a tool-gate or list decision (never a record decision) may be "
        "reused for the same principal, component and action (`0`: off). A revoked "
        "permission is refused at most this long after the PDP has reloaded the policy; "
        "never beyond the token's expiry, never while the PDP is unreachable.",
    )

    # --- development helpers ----------------------------------------------------------------
    dev_issuer_dir: Path = Field(
        default=Path(".dev/issuer"), description="Where the dev token issuer keeps its key."
    )

    # --- capabilities ----------------------------------------------------------------------------
    capabilities: str = Field(
        default="tools",
        pattern=r"^[A-Za-z_][\w.]*$",
        description="Module whose `CAPABILITIES` the server registers; the Vault identities, "
        "tables and demo rows follow from them.",
    )

    # --- store -------------------------------------------------------------------------------
    database_url: str = Field(
        default="sqlite+aiosqlite:///.dev/data/template.db",
        description="SQLAlchemy async URL without user or password. SQLite: one file, one "
        "identity for every capability. PostgreSQL (`postgresql+asyncpg://host:port/db`): each "
        "capability connects with its own short-lived login from Vault's database engine.",
    )
    database_timeout_seconds: float = Field(
        default=2.0, gt=0, le=30, description="Connect timeout, and the readiness probe's bound."
    )
    database_pool_size: int = Field(
        default=20,
        ge=1,
        le=500,
        description="Database connections each worker keeps open; cover the requests in flight "
        "(a tool holds one for its transaction, PDP round trip included).",
    )
    seed_demo_data: bool = Field(
        default=True, description="Add each capability's demo rows to its empty tables."
    )

    # --- Vault (or OpenBao): addresses, names and file locations only -------------------------
    vault_address: str = Field(
        default="http://127.0.0.1:8200", description="Vault (or OpenBao) address."
    )
    vault_timeout_seconds: float = Field(
        default=2.0, gt=0, le=5, description="Per-request timeout towards Vault."
    )
    vault_tls_verify: bool = Field(default=True, description="Verify Vault's TLS certificate.")
    vault_ca_file: Path | None = Field(default=None, description="CA bundle for Vault's TLS.")
    # The bootstrap credential is delivered as files, never as config or env values.
    vault_login: Literal["approle", "token_file", "jwt"] = Field(
        default="approle",
        description="`approle`: a role id and a response-wrapped secret id, unwrapped once and "
        "the file deleted; `token_file`: a token file an agent keeps fresh; `jwt`: a JWT file "
        "(e.g. a projected Kubernetes service-account token), re-read at every login.",
    )
    vault_approle_mount: str = Field(default="approle", description="Mount of the AppRole method.")
    vault_approle_role: str = Field(default="mcp-server", description="The server's AppRole.")
    vault_role_id_file: Path = Field(
        default=Path(".dev/vault/role-id"), description="File holding the AppRole role id."
    )
    vault_wrapped_secret_id_file: Path = Field(
        default=Path(".dev/vault/secret-id.wrapped"),
        description="File holding the wrapped secret id; deleted after use.",
    )
    vault_token_file: Path | None = Field(
        default=None, description="Token file for `MCP_VAULT_LOGIN=token_file`."
    )
    vault_jwt_file: Path = Field(
        default=Path("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        description="JWT file for `MCP_VAULT_LOGIN=jwt`.",
    )
    vault_jwt_mount: str = Field(
        default="kubernetes",
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description="Mount of the `kubernetes` (or `jwt`) auth method the JWT logs in at.",
    )
    vault_jwt_role: str = Field(
        default="mcp-server", min_length=1, description="Role of that login."
    )
    vault_role_prefix: str = Field(
        default="mcp-",
        description="Identity X is minted through the token role `<prefix>X` and holds only "
        "the policy `<prefix>X`.",
    )
    vault_tool_token_ttl_seconds: int = Field(
        default=300, ge=2, le=3600, description="Lifetime of each identity's child token."
    )
    vault_secret_cache_seconds: int = Field(
        default=300,
        ge=0,
        le=3600,
        description="Upper bound for caching a KV secret (never beyond the token that read it).",
    )
    vault_kv_mount: str = Field(default="secret", description="Mount of the KV v2 engine.")
    vault_transit_mount: str = Field(default="transit", description="Mount of the transit engine.")
    vault_database_mount: str = Field(
        default="database",
        description="Mount of the database secrets engine (PostgreSQL stores): capability X's "
        "login comes from `<mount>/creds/<prefix>X`.",
    )

    # --- settings-level secrets: values come from Vault (see server/vault/settings_source.py) ---
    database_password: Annotated[SecretStr | None, FromVault("mcp/server", "database_password")] = (
        Field(
            default=None,
            description="A settings-level secret read from Vault only, through the server's "
            "settings identity. The store does not use it: PostgreSQL logins are per capability, "
            "from Vault's database engine.",
        )
    )

    request_state_key: Annotated[SecretStr | None, FromVault("mcp/server", "request_state_key")] = (
        Field(
            default=None,
            description="A settings-level secret read from Vault only: the key that seals the "
            "`requestState` a tool hands the client between rounds of one call (e.g. a human "
            "confirmation), AES-256-GCM. Every replica reads the same one, so a round started "
            "on one replica is finished on another; the bootstrap creates it, and the server "
            "refuses to start without it.",
        )
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
        # or variable cannot shadow a rotated secret (see server/vault/settings_source.py).
        vault = VaultSettingsSource(settings_cls, active_vault_reader())
        return vault, init_settings, env_settings, dotenv_settings, file_secret_settings

    # --- telemetry (OpenTelemetry traces) -----------------------------------------------------
    otel_exporter: Literal["none", "console", "otlp"] = Field(
        default="none",
        description="`none`: no SDK (the trace context still reaches the PDP); `console`: "
        "spans to stderr; `otlp`: batched export to `MCP_OTEL_ENDPOINT`.",
    )
    otel_endpoint: str | None = Field(
        default=None,
        description="OTLP collector base URL, e.g. http://127.0.0.1:4317 (grpc) or "
        "http://127.0.0.1:4318 (http/protobuf).",
    )
    otel_protocol: Literal["grpc", "http/protobuf"] = Field(
        default="grpc", description="OTLP protocol."
    )
    otel_service_name: str | None = Field(
        default=None, description="service.name of the spans; defaults to server_name."
    )
    service_version: str | None = Field(
        default=None, description="service.version of the spans; defaults to the package version."
    )
    # An unreachable collector must cost requests nothing: spans wait in a bounded queue
    # (oldest dropped when full) and each export gives up after this timeout.
    otel_export_timeout_seconds: float = Field(
        default=2.0, gt=0, le=30, description="Per-export timeout."
    )
    otel_max_queue_size: int = Field(
        default=2048, ge=1, le=100_000, description="Spans queued before the oldest are dropped."
    )
    otel_decision_spans: bool = Field(
        default=False,
        description="One `authz.check`/`authz.plan` span per PDP request; by default each "
        "decision is an `authz.decision` event on the request's span (cheaper, same fields).",
    )
    otel_statement_spans: bool = Field(
        default=False,
        description="One span per SQL statement (parametrized text, never values).",
    )

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("path must start with '/'")
        return value.rstrip("/") or "/"

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {entry!r} is not an IP address or network"
                ) from None
        return value

    @model_validator(mode="after")
    def _http_needs_an_issuer(self) -> Settings:
        if self.transport == "http" and not (self.auth_jwks_url and self.auth_issuer):
            raise ValueError(
                "HTTP transport needs MCP_AUTH_JWKS_URL and MCP_AUTH_ISSUER: "
                "every HTTP request is authenticated"
            )
        return self

    @model_validator(mode="after")
    def _workers_need_http(self) -> Settings:
        if self.workers > 1 and self.transport != "http":
            raise ValueError("MCP_WORKERS > 1 needs the HTTP transport")
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
