"""Settings of every Agentic Mesh process, read from ``AGENTMESH_*`` environment variables.

One frozen dataclass, one place: each field ``foo_bar`` is set by ``AGENTMESH_FOO_BAR``. Values are parsed
by the field's type (bool accepts 1/0/true/false/yes/no; durations are seconds as floats).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path

ENV_PREFIX = "AGENTMESH_"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Typed settings with defaults that need nothing installed (SQLite, local Triton, dev CA)."""

    # Working folder of a local mesh: dev CA, certificates, SQLite database, model cache.
    home: Path = Path(".agentmesh")
    # SQLAlchemy URL; empty means SQLite at <home>/mesh.db. postgresql+psycopg://... in production.
    database_url: str = ""
    # SPIFFE trust domain of the mesh.
    trust_domain: str = "agentmesh.local"
    # This process's certificate, key and the mesh CA bundle; empty means <home>/certs/<kind>-<name>*.pem.
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    # Plaintext instead of mTLS; only for local experiments, logged loudly.
    insecure_dev: bool = False
    # Address servers bind to.
    bind_host: str = "127.0.0.1"
    registry_port: int = 7400
    planner_port: int = 7401
    gateway_port: int = 7443
    agent_port: int = 0
    # Where clients find the registry and planner: host:port, several comma-separated replicas, or a DNS name
    # with many addresses (each replica is verified by its SPIFFE id, so any of them answers).
    registry_address: str = "127.0.0.1:7400"
    planner_address: str = "127.0.0.1:7401"
    # Prometheus /metrics port; 0 disables the HTTP endpoint.
    metrics_port: int = 0
    # Triton KServe v2 gRPC address; empty means the local bundled server started by `agentmesh triton`.
    triton_url: str = ""
    triton_port: int = 8001
    # Authorization policy YAML; empty means the built-in default policy.
    authz_policy_file: str = ""
    # Head sampling ratio for new traces (parent-based).
    trace_sampling: float = 0.01
    # Span exporter: none, console or otlp.
    trace_exporter: str = "none"
    otlp_endpoint: str = "http://127.0.0.1:4317"
    # Logging.
    log_level: str = "INFO"
    log_format: str = "json"
    # Default deadline of outbound calls, seconds.
    default_deadline: float = 10.0
    # Retries of transient failures on outbound unary calls: attempts in all, first and largest backoff (s).
    retry_max_attempts: int = 3
    retry_initial_backoff: float = 0.05
    retry_max_backoff: float = 2.0
    # Circuit breaker per endpoint: consecutive failures that open it, seconds before a half-open probe.
    breaker_failure_threshold: int = 5
    breaker_reset_timeout: float = 10.0
    # Agent lease time to live, seconds.
    lease_ttl: float = 10.0
    # Registry: bounds of a requested lease TTL, seconds.
    lease_ttl_min: float = 0.5
    lease_ttl_max: float = 300.0
    # Registry: seconds between batched flushes of heartbeat lease expiries (and expiry sweeps).
    lease_flush_interval: float = 1.0
    # Registry: seconds between polls of the change log (how fast replicas see each other's changes).
    registry_poll_interval: float = 0.1
    # Registry: hours of change log kept for watchers resuming from a revision.
    registry_event_retention_hours: float = 24.0
    # Host other processes use to reach this one (the endpoint an agent registers); empty means bind_host,
    # or this machine's hostname when bind_host is a wildcard (0.0.0.0, ::).
    advertise_host: str = ""
    # Agent idempotency cache: results kept per (skill, idempotency key), and for how many seconds.
    idempotency_cache_size: int = 10_000
    idempotency_ttl: float = 3600.0
    # Seconds a stopping server waits for in-flight calls.
    shutdown_grace: float = 10.0
    # Seconds between readiness checks of a server's dependencies.
    readiness_interval: float = 1.0
    # Planner: seconds a claimed step's lease lasts unless renewed (renewed every third of it while the call
    # runs); a crashed planner's steps are taken over after at most this long.
    planner_lease_ttl: float = 5.0
    # Planner: steps claimed per database round trip, and steps running at once per replica.
    planner_claim_batch: int = 32
    planner_max_in_flight: int = 256
    # Planner: seconds between claim polls when idle (local work wakes the loop at once).
    planner_poll_interval: float = 0.05
    # Planner: default time a whole task may take, and one step attempt, seconds.
    planner_task_timeout: float = 300.0
    planner_step_timeout: float = 30.0
    # Planner: largest agent output accepted (serialized bytes); larger fails the step.
    planner_max_output_bytes: int = 1_000_000
    # Planner: sub-task bounds (depth below a task submitted from outside; sub-tasks per parent task).
    planner_max_subtask_depth: int = 3
    planner_max_subtask_fanout: int = 10
    # Planner: seconds a cached discovery answer is reused for the same step query.
    planner_discovery_cache_ttl: float = 1.0
    # Planner: a folder of extra playbooks (*.yaml) loaded beside the shipped ones; empty means none.
    planner_playbooks_path: str = ""
    # Planner: identities (globs, comma-separated) holding the `approve` permission for ApproveStep/RejectStep;
    # behind the gateway, the end user's token needs the `approve` scope instead.
    planner_approver_identities: str = "spiffe://{trust_domain}/client/ops,spiffe://{trust_domain}/client/approver-*"
    # Gateway: the OAuth2 JWKS (a file path or an https:// URL; empty means the dev JWKS that
    # `agentmesh token issue` keeps under <home>/dev-jwks/), the accepted issuer and audience, and the pinned
    # algorithms (comma-separated; never "none" or HS*).
    gateway_jwks: str = ""
    gateway_jwt_issuer: str = "https://agentmesh.local/dev-issuer"
    gateway_jwt_audience: str = "agentmesh-gateway"
    gateway_jwt_algorithms: str = "RS256,ES256"
    # Seconds a fetched JWKS is reused; an unknown key id refetches at most once per this many seconds / 10.
    gateway_jwks_ttl: float = 300.0
    # Gateway public TLS certificate and key; empty means the mesh CA's certificate for service/gateway.
    gateway_tls_cert_file: str = ""
    gateway_tls_key_file: str = ""
    # Gateway token buckets (requests per second and burst), per end user and per tenant, in EACH replica.
    gateway_rate_per_principal: float = 20.0
    gateway_burst_per_principal: float = 40.0
    gateway_rate_per_tenant: float = 200.0
    gateway_burst_per_tenant: float = 400.0
    # Largest request the gateway accepts, bytes (serialized message).
    gateway_max_request_bytes: int = 65_536
    # Prompt-injection screen: "flag" (the task carries the flag) or "reject" (INVALID_ARGUMENT).
    gateway_injection_policy: str = "flag"
    # Mesh console (web UI served by the gateway process over HTTPS with the gateway's certificate); -1: off.
    console_port: int = 7444
    # Keyed PII pseudonyms (HMAC-SHA256): a file holding the mesh's pseudonym secret. Where one is set (or
    # <home>/pseudonym.key exists, as `agentmesh up` makes it), redaction at the gateway replaces an email or
    # phone number by a stable pseudonym such as "[email:kpbf...]" that the CRM agent indexes its customers by;
    # without one, by a plain marker ("[email]").
    pseudonym_key_file: str = ""

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite under ``home``."""
        return self.database_url or f"sqlite:///{self.home / 'mesh.db'}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``AGENTMESH_*`` variables; keyword overrides win over the environment."""
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                values[field.name] = _parse(field.name, raw, hints[field.name])
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]  # each value was parsed to its field's type at run time

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]  # field names and types: the caller's


def _parse(name: str, raw: str, kind: object) -> object:
    if isinstance(kind, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw)
        return raw
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from None
