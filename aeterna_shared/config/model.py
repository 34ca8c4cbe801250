"""The configuration model: the spec's YAML keys, as written, with its defaults.

One document configures central and edge alike (the Helm chart renders it from
values); each service reads the sections it needs. Keys are camelCase in YAML
and snake_case in Python. Unknown keys are errors, so a typo never silently
falls back to a default. Sections marked "chart only" are accepted so that the
spec's values files load unchanged, but only the Helm chart acts on them.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from aeterna_shared.config.units import ByteSize, Duration


class Section(BaseModel):
    """Base of every config section: frozen, strict about unknown keys, camelCase aliases."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
    )


# --- cache (edge) -----------------------------------------------------------------


class WorkingLayer(Section):
    ttl: Duration = timedelta(seconds=5)
    """How long a working-memory value lives when the caller gives no TTL (spec: 1-5 s)."""
    max_ttl: Duration = timedelta(seconds=5)
    """The longest TTL a caller may ask for (spec: 1-5 s); see ``ttlOverflow`` for what a longer one gets."""
    ttl_overflow: Literal["refuse", "cap"] = "refuse"
    """A TTL above ``maxTtl``: refuse (INVALID_ARGUMENT naming the field) or cap it to ``maxTtl``."""
    max_size: ByteSize = 1024**3
    """Memory bound of working memory alone (its own cache's `maxmemory`), for example 1Gi."""
    eviction_policy: Literal["lru", "lfu", "noeviction"] = "lru"
    """What working memory evicts when full: lru and lfu map to Redis' allkeys-lru/allkeys-lfu.
    Working memory is the only layer that is ever evicted."""

    @model_validator(mode="after")
    def _ttl_within_max(self) -> WorkingLayer:
        if self.ttl > self.max_ttl:
            raise ValueError(f"ttl ({self.ttl}) must not exceed maxTtl ({self.max_ttl})")
        if self.ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        return self


class SessionLayer(Section):
    ttl: Duration = timedelta(hours=24)
    """How long a session stays in the edge cache after it was last synced. A session with changes
    central has not acknowledged never expires and is never evicted."""
    max_size: ByteSize = 0
    """Memory bound of the session store (Redis `maxmemory`, policy `volatile-lru`): only synced copies
    can be evicted; when nothing else can go, session writes are refused with RESOURCE_EXHAUSTED and a
    retry delay. 0: no bound."""


class CacheLayers(Section):
    working: WorkingLayer = WorkingLayer()
    """Working memory: ephemeral, local to the edge, never synced, the only evictable layer."""
    session: SessionLayer = SessionLayer()
    """Session memory held at the edge."""


class CacheConfig(Section):
    backend: Literal["dragonfly", "redis"] = "dragonfly"
    """Cache server kind; both speak the Redis protocol."""
    url: str | None = None
    """redis:// URL of the session store (and of working memory unless ``workingUrl`` is set).
    It may evict only keys with a TTL (maxmemory-policy volatile-lru, or noeviction) and must persist
    every write (appendonly yes); the edge checks both at start. Unset: the edge starts and owns local
    redis-servers."""
    working_url: str | None = None
    """redis:// URL of a separate cache for working memory alone (may evict). Unset with ``url``
    set: working memory shares the session store and never evicts."""
    allow_unsafe_cache: bool = False
    """Start even when the cache at ``url`` may evict keys or does not persist every write.
    Acknowledged sessions can then be lost: only for people who accept that risk."""
    layers: CacheLayers = CacheLayers()
    """Per-layer settings."""


# --- sync -------------------------------------------------------------------------


class CentralServerEndpoint(Section):
    url: str = "http://127.0.0.1"
    """Central's address: https:// uses TLS, http:// plaintext (development only)."""
    port: int = Field(default=8081, ge=1, le=65535)
    """Central's sync port."""
    timeout: Duration = timedelta(seconds=30)
    """Deadline of every call to central."""
    max_retries: int = Field(default=3, ge=0, le=100)
    """Retries of a failed call before the batch stays queued."""
    stream_timeout: Duration = timedelta(hours=1)
    """Default deadline of a response-streaming call to central (watch, sync) when the caller sets none."""

    @property
    def target(self) -> str:
        """host:port for a gRPC channel."""
        host = re.sub(r"^[a-z]+://", "", self.url).rstrip("/")
        host = host.split("/", 1)[0]
        return host if re.search(r":\d+$", host) else f"{host}:{self.port}"

    @property
    def uses_tls(self) -> bool:
        """True when the URL's scheme asks for TLS."""
        return self.url.startswith(("https://", "grpcs://"))


class TokenReviewSettings(Section):
    url: str = "https://kubernetes.default.svc"
    """Central: the Kubernetes API server that answers TokenReviews (in-cluster address by default)."""
    ca_file: str | None = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    """CA that signed the API server's certificate; unset: the system roots."""
    token_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path, not a secret
    """Central's own service-account token, presented to the API server (needs system:auth-delegator);
    read at every review, so a rotated token applies."""
    audiences: tuple[str, ...] = ()
    """Audiences the reviewed token must be bound to; empty: [sync.auth.jwt.audience]."""
    cache_ttl: Duration = timedelta(seconds=30)
    """How long an accepted token stays accepted without another review (never beyond its exp);
    the cache is keyed by a hash of the token. 0s: review every call."""
    timeout: Duration = timedelta(seconds=5)
    """Deadline of one TokenReview request."""

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must be an https:// URL (the API server is reached over TLS)")
        return value.rstrip("/")

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive")
        return value


class ServiceAccountAuth(Section):
    name: str = "aeterna-edge-sync"
    """Kubernetes service account the edge runs as (chart)."""
    token_path: str = "/var/run/secrets/aeterna/token"  # noqa: S105 - a path, not a secret
    """Projected, audience-bound service-account token file the edge presents."""
    audience: str = "aeterna-central"
    """Audience the projected token is bound to; central checks it."""
    subjects: dict[str, str] = Field(default_factory=dict)
    """Central: subject (system:serviceaccount:<ns>:<name>) -> "agent" or "tenant/agent"; when set it is an
    allow-list, when empty the agent id is <name> in the default tenant."""
    verification: Literal["jwks", "tokenReview"] = "jwks"
    """Central: how service-account tokens are verified: jwks (signature against sync.auth.jwt's keys) or
    tokenReview (the Kubernetes API server reviews each token; see tokenReview)."""
    token_review: TokenReviewSettings = TokenReviewSettings()
    """Central, verification tokenReview: the API server and central's own credentials for it."""


class JwtVerification(Section):
    jwks_file: str | None = None
    """JWKS (JSON) file of keys central trusts for OAuth2 or service-account JWTs (reloaded when it changes)."""
    jwks_url: str | None = None
    """https:// URL of the issuer's JWKS, fetched and cached (exclusive with jwksFile and discovery)."""
    oidc_discovery: bool = False
    """Find the JWKS through OIDC discovery: <issuer>/.well-known/openid-configuration, whose issuer must
    equal `issuer`."""
    discovery_url: str | None = None
    """https:// URL of the OpenID configuration document when it is not under the issuer (implies discovery)."""
    jwks_cache_ttl: Duration = timedelta(minutes=5)
    """How long fetched keys are used before they are fetched again (in the background)."""
    jwks_refresh_min_interval: Duration = timedelta(seconds=30)
    """At most one extra fetch per interval for tokens naming an unknown kid (or after a failed fetch)."""
    ca_file: str | None = None
    """CA bundle for the IdP's HTTPS certificate (discovery and JWKS); unset: the system roots."""
    fetch_timeout: Duration = timedelta(seconds=10)
    """Deadline of one discovery or JWKS request."""
    issuer: str | None = None
    """Required `iss` claim."""
    audience: str = "aeterna-central"
    """Required `aud` claim."""
    clock_skew: Duration = timedelta(seconds=30)
    """Tolerance on exp/nbf."""
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    """Accepted signature algorithms."""
    agent_id_claim: str = "sub"
    """OAuth2: claim naming the agent id (client-credentials tokens usually carry the client in sub)."""
    tenant_claim: str = "tenant"
    """Claim naming the tenant; absent means the default tenant."""
    region_claim: str = "region"
    """Claim naming the region; absent means unbound."""

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtVerification:
        discovery = self.oidc_discovery or self.discovery_url is not None
        if self.jwks_file and (self.jwks_url or discovery):
            other = "jwksUrl" if self.jwks_url else ("discoveryUrl" if self.discovery_url else "oidcDiscovery")
            raise ValueError(f"jwksFile and {other} are exclusive: central reads its keys from one place, set one")
        if self.jwks_url and discovery:
            other = "discoveryUrl" if self.discovery_url else "oidcDiscovery"
            raise ValueError(f"jwksUrl and {other} are exclusive: discovery finds the JWKS URL itself, set one")
        if discovery and not self.issuer:
            raise ValueError("OIDC discovery (oidcDiscovery or discoveryUrl) needs issuer: the document must name it")
        for key, url in (("jwksUrl", self.jwks_url), ("discoveryUrl", self.discovery_url)):
            if url is not None and not url.startswith("https://"):
                raise ValueError(f"{key} must be an https:// URL (keys fetched in the clear could be replaced)")
        if self.oidc_discovery and not self.discovery_url and not str(self.issuer).startswith("https://"):
            raise ValueError("oidcDiscovery needs an https:// issuer (or set discoveryUrl)")
        if self.fetch_timeout <= timedelta(0):
            raise ValueError("fetchTimeout must be positive")
        return self


class AuthConfig(Section):
    method: Literal["apiKey", "oauth2", "serviceAccount", "mtls", "none"] = "none"
    """How edges authenticate to central (and agents to an edge): apiKey, oauth2, serviceAccount, mtls."""
    existing_secret: str | None = None
    """Kubernetes Secret holding the credentials (chart); mounted at `secretDir`."""
    secret_dir: str | None = None
    """Directory where the secret is mounted; files apiKey, clientId, clientSecret, tokenUrl."""
    api_key: str | None = None
    """API key the edge presents; prefer `secretDir` or the AETERNA_SYNC__AUTH__API_KEY env."""
    api_keys_file: str | None = None
    """Central: YAML/JSON file of sha256 key hashes mapped to identities."""
    token_url: str | None = None
    """OAuth2 token endpoint (client-credentials grant)."""
    client_id: str | None = None
    """OAuth2 client id."""
    client_secret: str | None = None
    """OAuth2 client secret; prefer `secretDir`."""
    scope: str | None = None
    """OAuth2 scope to request."""
    service_account: ServiceAccountAuth = ServiceAccountAuth()
    """Kubernetes service-account token settings."""
    jwt: JwtVerification = JwtVerification()
    """How central verifies JWTs (OAuth2 and service-account methods)."""


class BatchConfig(Section):
    max_size: int = Field(default=100, ge=1, le=100_000)
    """Maximum items per batch."""
    max_bytes: ByteSize = Field(default=10 * 1024 * 1024, ge=1024)
    """Maximum encoded batch size; also the max message size after decompression."""
    flush_interval: Duration = timedelta(seconds=60)
    """Maximum time before a non-empty batch is forced out."""


class LayerSyncToggle(Section):
    sync_enabled: bool = False
    """Working memory is never synced; true is refused."""

    @field_validator("sync_enabled")
    @classmethod
    def _never(cls, value: bool) -> bool:
        if value:
            raise ValueError("working memory is local to the edge and can never be synced")
        return value


class LayerSync(Section):
    sync_enabled: bool = True
    """Whether this layer syncs to central."""
    interval: Duration = timedelta(seconds=60)
    """How often the layer's collector flushes."""
    batch_size: int = Field(default=100, ge=1, le=100_000)
    """Items per batch."""
    compression: Literal["gzip", "none"] = "gzip"
    """Compression on the wire."""
    on_error: Literal["queue"] = "queue"
    """What happens after the retries: the batch stays queued in the outbox."""
    mode: Literal["eventual", "strong"] = "eventual"
    """Episodic only: eventual queues writes; strong waits for central."""


def _episodic_layer() -> LayerSync:
    return LayerSync(interval=timedelta(hours=1), batch_size=1000)


class MemoryLayers(Section):
    working: LayerSyncToggle = LayerSyncToggle()
    """Working memory sync (never)."""
    session: LayerSync = LayerSync()
    """Session memory sync."""
    episodic: LayerSync = Field(default_factory=_episodic_layer)
    """Episodic memory (and vector) sync."""


class SessionMemorySync(Section):
    enabled: bool = True
    """Whether session memory syncs (same meaning as memoryLayers.session.syncEnabled)."""
    batch_size: int = Field(default=100, ge=1, le=100_000)
    """Sessions per batch."""
    interval: Duration = timedelta(seconds=60)
    """How often dirty sessions are flushed."""
    compression: Literal["gzip", "none"] = "gzip"
    """Compression on the wire."""
    max_retries: int = Field(default=3, ge=0, le=100)
    """Retries of a batch before it stays queued."""
    retry_backoff: Literal["exponential"] = "exponential"
    """Backoff between retries; always with jitter."""


class VectorSync(Section):
    enabled: bool = True
    """Whether vectors written at the edge sync to central."""
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    """Vectors per batch."""
    interval: Duration = timedelta(hours=1)
    """How often vectors sync."""


class EpisodicMemorySync(Section):
    enabled: bool = True
    """Whether episodic memory syncs."""
    mode: Literal["eventual", "strong"] = "eventual"
    """eventual: queue and answer at once; strong: answer only once central stored it."""
    snapshot_interval: Duration = timedelta(days=1)
    """Central: how often an episodic snapshot is written."""
    vector_sync: VectorSync = VectorSync()
    """Vector sync settings."""


class NetworkConfig(Section):
    compression: Literal["gzip", "none"] = "gzip"
    """gRPC compression for channels and servers."""
    encryption: Literal["tls12", "tls13"] = "tls12"
    """Minimum TLS version."""
    certificate_pinning: bool = False
    """Whether the edge pins central's certificate by SPKI SHA-256."""
    pinned_certificates: tuple[str, ...] = ()
    """Accepted pins, "sha256/<base64>"; several allow rotation."""

    @field_validator("pinned_certificates")
    @classmethod
    def _pins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pin in value:
            if not re.fullmatch(r"sha256/[A-Za-z0-9+/]{43}=", pin):
                raise ValueError(f"{pin!r} is not a pin of the form sha256/<44 base64 characters>")
        return value

    @model_validator(mode="after")
    def _pinning_needs_pins(self) -> NetworkConfig:
        if self.certificate_pinning and not self.pinned_certificates:
            raise ValueError("certificatePinning is on but pinnedCertificates is empty")
        return self


class SyncOfflineQueue(Section):
    mode: Literal["queue"] = "queue"
    """Writes are queued while central is unreachable."""
    max_queue_size: int = Field(default=10_000, ge=1)
    """Maximum queued items per channel; the oldest overflow to the dead-letter store."""
    queue_ttl: Duration = Field(default=timedelta(hours=1), alias="queueTTL")
    """Queued items older than this move to the dead-letter store (the spec spells the key queueTTL)."""
    fallback_cache: bool = True
    """Serve cached results while central is unreachable."""


class SigningConfig(Section):
    key: str | None = None
    """Edge: HMAC key for batch signatures; prefer `keyFile` or the env override."""
    key_file: str | None = None
    """Edge: file holding the HMAC key."""
    keys_file: str | None = None
    """Central: YAML/JSON mapping agent id -> HMAC key."""
    freshness_window: Duration = timedelta(minutes=5)
    """Central refuses batches whose sent_time is further than this from now."""


class SyncConfig(Section):
    enabled: bool = True
    """Whether the edge syncs with central at all."""
    central_server: CentralServerEndpoint = CentralServerEndpoint()
    """Where central is (edge side)."""
    auth: AuthConfig = AuthConfig()
    """Authentication with central."""
    batch: BatchConfig = BatchConfig()
    """Batch limits."""
    memory_layers: MemoryLayers = MemoryLayers()
    """Per-layer sync."""
    session_memory: SessionMemorySync = SessionMemorySync()
    """Session sync (the spec's sync.sessionMemory block)."""
    episodic_memory: EpisodicMemorySync = EpisodicMemorySync()
    """Episodic and vector sync."""
    network: NetworkConfig = NetworkConfig()
    """Transport settings."""
    offline: SyncOfflineQueue = SyncOfflineQueue()
    """Outbox limits while offline."""
    signing: SigningConfig = SigningConfig()
    """Batch signatures."""
    listen_port: int = Field(default=8081, ge=0, le=65535)
    """Central: sync API port (0 picks a free port)."""
    max_edges: int = Field(default=1000, ge=1)
    """Central: the fleet size planned for. Not enforced yet: central registers every edge that syncs."""
    rate_limit: str = "100/sec"
    """Central: per-edge rate limit, "<n>/sec" or "<n>/min"."""
    rate_limit_burst: int | None = Field(default=None, ge=1)
    """Token-bucket burst; unset means one second's worth."""
    max_streams_per_identity: int = Field(default=8, ge=1)
    """Maximum concurrent streams one identity may hold open."""
    ingest_concurrency: int | None = Field(default=None, ge=1, le=10_000)
    """Central: batches written at once (each holds one pooled connection); unset: ``postgresql.poolSize``."""
    ingest_wait: Duration = timedelta(seconds=5)
    """Central: the longest a batch waits for a write turn; then RESOURCE_EXHAUSTED (INGEST_BUSY) with RetryInfo."""
    rate_limit_redis_url: str | None = None
    """Central: redis:// URL of a limiter shared by several replicas; unset keeps buckets in process."""
    offline_after: Duration = timedelta(minutes=5)
    """Central: an edge with no batch for this long is marked offline."""

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        if not re.fullmatch(r"\d+(\.\d+)?/(sec|s|second|min|m|minute)", value.strip()):
            raise ValueError(f"a rate such as 100/sec or 6000/min, got {value!r}")
        return value.strip()

    @property
    def rate_per_second(self) -> float:
        """The rate limit as requests per second."""
        amount, unit = self.rate_limit.split("/")
        return float(amount) / (60.0 if unit.startswith("m") else 1.0)

    @property
    def session_interval(self) -> timedelta:
        """Effective session flush interval: memoryLayers.session wins when set explicitly."""
        layer = self.memory_layers.session
        return layer.interval if "interval" in layer.model_fields_set else self.session_memory.interval

    @property
    def session_batch_size(self) -> int:
        """Effective sessions per batch, bounded by batch.maxSize."""
        layer = self.memory_layers.session
        size = layer.batch_size if "batch_size" in layer.model_fields_set else self.session_memory.batch_size
        return min(size, self.batch.max_size)

    @property
    def session_sync_enabled(self) -> bool:
        """Session sync is on only when neither block turns it off."""
        return self.enabled and self.session_memory.enabled and self.memory_layers.session.sync_enabled


# --- offline, health, vectors ------------------------------------------------------


class OfflineBehaviour(Section):
    enabled: bool = True
    """Whether the edge keeps serving while central is unreachable."""
    fallback_mode: Literal["cache"] = "cache"
    """Serve from the edge cache."""
    decision_queueing: bool = True
    """Queue decisions for replay on reconnect."""
    max_queue_size: int = Field(default=5000, ge=1)
    """Maximum queued decisions; overflow goes to the dead-letter store."""
    decision_durability: Literal["process", "power"] = "process"
    """Edge: what an answered Authorize's decision survives before it reaches central. ``process`` (default):
    committed to the outbox's write-ahead log without an fsync before the answer, so it survives a crash or
    SIGKILL of the edge process; a power loss or kernel crash can lose the decisions of the last
    ``decisionSyncInterval``. ``power``: fsynced (group-committed) before the answer, so it also survives a
    power loss, at the cost of an fsync in every answer's latency. Neither survives the loss of the disk."""
    decision_sync_interval: Duration = Field(default=timedelta(seconds=1), gt=timedelta(0))
    """Edge, ``decisionDurability: process``: how often decisions answered without an fsync are checkpointed and
    fsynced; the most a power loss can take."""
    conflict_resolution: Literal["timestamp", "central", "manual"] = "timestamp"
    """Central: how replayed decisions that conflict with later ones are settled."""
    conflict_resolution_by_action: dict[str, Literal["timestamp", "central", "manual"]] = Field(default_factory=dict)
    """Central: per Cedar action uid (e.g. Action::"approve"), a policy that overrides conflictResolution."""


class AeternaSection(Section):
    offline: OfflineBehaviour = OfflineBehaviour()
    """Offline operation."""


class HealthCheck(Section):
    interval: Duration = timedelta(seconds=30)
    """Time between health checks of central (also the retry period while offline)."""
    timeout: Duration = timedelta(seconds=5)
    """Deadline of one health check."""
    failure_threshold: int = Field(default=3, ge=1)
    """Consecutive failures after which the edge goes offline."""


class CentralServerSection(Section):
    health_check: HealthCheck = HealthCheck()
    """How the edge watches central."""


class QdrantCache(Section):
    enabled: bool = True
    """Whether vectors fetched from central are cached at the edge."""
    size: int = Field(default=10_000, ge=1)
    """How many cached vectors are kept (most frequently accessed win)."""
    ttl: Duration = timedelta(days=1)
    """How long a cached vector lives without access."""
    policy: Literal["frequency"] = "frequency"
    """Which cached vectors are kept."""


class QdrantHnsw(Section):
    """The edge shard's HNSW graph and search beam: recall against latency (see docs/performance.md, Vectors)."""

    ef: int = Field(default=96, ge=10, le=4096)
    """Search beam (``hnsw_ef``): candidates kept while walking the graph. Wider finds more of the true top-k
    (recall@10 0.97-0.99 at 64, 0.99 at 96 on 100k clustered 384-d vectors) and costs time, less than in proportion;
    a search for more than ``ef`` results widens it to the limit."""
    m: int = Field(default=16, ge=4, le=128)
    """Graph links per vector, used when the index is (re)built: more links, better recall at the same beam,
    more memory (about ``m`` × 8 bytes per vector) and a slower build."""
    ef_construct: int = Field(default=100, ge=4, le=4096)
    """Beam used while building the graph: a better graph for a slower build. Applies to indexes built
    after a change; vectors already indexed keep their graph until the next optimize."""


class QdrantSection(Section):
    cache: QdrantCache = QdrantCache()
    """Edge vector cache."""
    hnsw: QdrantHnsw = QdrantHnsw()
    """HNSW build and search parameters of the edge's vector shard."""


class VectorDatabase(Section):
    backend: Literal["pgvector", "qdrant"] = "pgvector"
    """Central's vector graph: pgvector (default) or a Qdrant server."""
    dimension: int = Field(default=384, ge=1, le=16_000)
    """Embedding dimension, the same at central and every edge."""
    qdrant_url: str | None = None
    """URL of the Qdrant server when backend is qdrant."""
    collection: str = "aeterna_vectors"
    """Qdrant collection name."""
    qdrant: dict[str, Any] = Field(default_factory=dict)
    """Chart only: the spec's vectorDatabase.qdrant block."""


# --- process-level sections ----------------------------------------------------------


class PostgresqlSection(Section):
    url: str | None = None
    """postgresql:// URL of central's database. Unset: central starts an embedded PostgreSQL 18 + pgvector."""
    pool_size: int = Field(default=10, ge=1, le=500)
    """Connections in central's pool."""
    direct_url: str | None = None
    """postgresql:// URL for central's direct connections, the two session-bound ones, LISTEN/NOTIFY (policy
    push) and the snapshot advisory lock, and the readiness probe's own, when ``url`` goes through a
    transaction-pooling PgBouncer, which breaks the first two. Unset: ``url``."""
    cloudnativepg: dict[str, Any] = Field(default_factory=dict)
    """Chart only: the CloudNativePG cluster."""


class TlsSection(Section):
    enabled: bool = False
    """Serve (central, edge) with TLS."""
    cert_file: str | None = None
    """PEM certificate chain of this server (or of the edge's client identity)."""
    key_file: str | None = None
    """PEM private key matching cert_file."""
    ca_file: str | None = None
    """PEM CA bundle: central verifies client certificates, edges verify central."""
    require_client_cert: bool = False
    """Central: demand a client certificate (mTLS)."""
    client_pins: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """Central: per agent id, the SPKI pins its client certificate must match."""
    cert_manager: dict[str, Any] = Field(default_factory=dict)
    """Chart only: cert-manager issuer settings."""


class CentralSection(Section):
    data_dir: str = "var/central"
    """Where central keeps the embedded database, snapshots and state."""
    listen_host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 in a container."""
    snapshot_dir: str | None = None
    """Where episodic snapshots go; default <dataDir>/snapshots."""
    snapshot_retention: int = Field(default=7, ge=0)
    """Complete snapshots kept in snapshotDir: older ones are deleted after each scheduled snapshot; 0 keeps all."""
    max_connection_age: Duration = timedelta(seconds=300)
    """GOAWAY to a client connection this old (gRPC jitters it by ±10 % per connection), so long-lived edge
    streams move to replicas added later; 0s: never."""
    max_connection_age_grace: Duration = timedelta(seconds=30)
    """How long calls still open on a connection past maxConnectionAge may go on before it is closed (their
    clients retry on a new one); 0s: until they end."""
    api_keys: dict[str, str] = Field(default_factory=dict)
    """Development only: agent id -> API key, hashed at load; use sync.auth.apiKeysFile in production."""


class EdgeSection(Section):
    agent_id: str = "edge-agent-1"
    """This edge's agent id (must match its credential)."""
    region: str = "local"
    """This edge's region."""
    tenant_id: str = "default"
    """Tenant this edge serves."""
    data_dir: str = "var/edge"
    """Where the outbox, the Qdrant Edge shard, the policy bundle and an owned Redis live."""
    listen_host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 in a container."""
    listen_port: int = Field(default=50051, ge=0, le=65535)
    """Agent-facing port (0 picks a free port)."""


class TelemetrySection(Section):
    metrics_port: int = Field(default=8080, ge=0, le=65535)
    """Prometheus /metrics port (0 picks a free port)."""
    metrics_enabled: bool = True
    """Serve /metrics."""
    health_port: int | None = Field(default=None, ge=0, le=65535)
    """Extra plaintext port serving only grpc.health.v1 for kubelet gRPC probes, which cannot speak TLS; unset: none."""
    metrics_host: str = "127.0.0.1"
    """Address the /metrics endpoint binds; 0.0.0.0 in a container so Prometheus can scrape it."""
    tracing_enabled: bool = True
    """Create OpenTelemetry spans for RPCs."""
    otlp_endpoint: str | None = None
    """OTLP/gRPC collector that receives the spans (``http://collector:4317`` plaintext, ``https://...`` TLS);
    unset: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``; none set: spans are not
    exported. A value here wins over the variables."""
    otlp_insecure: bool | None = None
    """Plaintext to the collector; unset: ``OTEL_EXPORTER_OTLP_(TRACES_)INSECURE``, else by the endpoint's scheme."""
    service_name: str | None = None
    """``service.name`` of the spans; unset: ``OTEL_SERVICE_NAME``, else ``aeterna-central`` / ``aeterna-edge``."""
    log_format: Literal["json", "text"] = "json"
    """Log line format."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level."""


class AeternaConfig(Section):
    deployment_mode: Literal["central", "edge", "hybrid"] = "hybrid"
    """Which part this document configures; hybrid accepts both."""
    development: bool = False
    """Development mode: allows the public development signing key (no ``sync.signing`` key configured)
    and ``sync.auth.method: none``; for local setups, the demo and the tests. Outside it central and edges
    refuse to start with either (``--development`` on ``aeterna central``/``aeterna edge`` sets it too)."""
    cache: CacheConfig = CacheConfig()
    """Edge cache (the spec's cache block)."""
    sync: SyncConfig = SyncConfig()
    """Sync between edge and central."""
    aeterna: AeternaSection = AeternaSection()
    """Offline behaviour (the spec's aeterna.offline block)."""
    central_server: CentralServerSection = CentralServerSection()
    """Health checking of central (the spec's centralServer block)."""
    qdrant: QdrantSection = QdrantSection()
    """Edge vector cache (the spec's qdrant.cache block)."""
    vector_database: VectorDatabase = VectorDatabase()
    """Central vector graph."""
    postgresql: PostgresqlSection = PostgresqlSection()
    """Central's database."""
    tls: TlsSection = TlsSection()
    """TLS for the server and for the link to central."""
    central: CentralSection = CentralSection()
    """Central process settings."""
    edge: EdgeSection = EdgeSection()
    """Edge process settings."""
    telemetry: TelemetrySection = TelemetrySection()
    """Metrics, traces and logs."""
    opal: dict[str, Any] = Field(default_factory=dict)
    """Chart only: the spec's opal block (Cedar policies are served by central here)."""
