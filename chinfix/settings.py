"""All configuration, in one pydantic-settings object read from `CHINFIX_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

import model_store
from chinfix.contract import QualityPolicy

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_TENANT = "default"


class ApiKey(BaseModel):
    """One bearer key and the tenant it belongs to. A tenant may hold several keys (rotation)."""

    model_config = ConfigDict(frozen=True)

    tenant: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    key: SecretStr

    @classmethod
    def parse(cls, entry: str) -> ApiKey:
        """`tenant:key`, or a bare `key` (the older form) for tenant `default`."""
        tenant, separator, key = entry.strip().partition(":")
        if not separator:
            tenant, key = DEFAULT_TENANT, tenant
        if not key.strip():
            raise ValueError(f"API key entry for tenant {tenant!r} has an empty key")
        return cls(tenant=tenant.strip(), key=SecretStr(key.strip()))


class Settings(BaseSettings):
    # Empty variables count as unset: docker-compose passes `${VAR:-}` through as "".
    model_config = SettingsConfigDict(env_prefix="CHINFIX_", extra="ignore", frozen=True, env_ignore_empty=True)

    # HTTP
    host: str = Field("127.0.0.1", description="address `serve` and `up` listen on")
    port: int = Field(8000, ge=1, le=65535, description="port `serve` and `up` listen on")
    api_keys: Annotated[tuple[ApiKey, ...], NoDecode] = Field(
        (),
        description="comma-separated `tenant:key` pairs (a bare `key` belongs to tenant `default`); "
        "empty means the API is open (local use only)",
    )
    allow_open: bool = Field(True, description="`serve` refuses to start without API keys when false (compose)")
    metrics_key: SecretStr | None = Field(
        None, description="bearer key /metrics and the details of /readyz require; unset: /metrics is open"
    )
    public_url: str | None = Field(None, description="base URL put in job links; default: the request's own")
    trusted_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        ("127.0.0.1", "localhost"),
        description="Host header values job links may be built from when public_url is unset; others get relative links",
    )

    # per-tenant limits
    rate_limit: float | None = Field(
        None, gt=0, description="requests per second per tenant (token bucket in Redis); unset: no limit"
    )
    rate_burst: int = Field(20, ge=1, description="requests a tenant may make at once before rate_limit applies")
    tenant_max_active_jobs: int = Field(
        100, ge=1, description="queued plus running jobs per tenant; POST /edit answers 429 quota_exceeded above"
    )

    # queue and storage
    redis_url: str | None = Field(
        None, description=f"Redis to use; unset: `up` starts an embedded one, others use {DEFAULT_REDIS_URL}"
    )
    queue_name: str = Field("chinfix", description="RQ queue the API fills and the workers drain")
    training_queue: str | None = Field(
        None, description="RQ queue of training shards, drained after the edit queue; unset: `<queue name>-training`"
    )
    training_shard_timeout_seconds: int = Field(
        3600, ge=10, description="a training shard (`chinfix train pairs --queue`) running longer than this fails"
    )
    key_prefix: str = Field("chinfix", description="prefix of every Redis key chinfix writes")
    job_ttl_seconds: int = Field(86_400, ge=60, description="how long inputs, results and job records are kept")
    max_queued_jobs: int = Field(
        1000,
        ge=1,
        description="while this many jobs wait, POST /edit and POST /jobs/{id}/variants answer 503 queue_full (back-pressure)",
    )
    job_timeout_seconds: int = Field(900, ge=10, description="a job running longer than this fails with job_timeout")
    lease_seconds: int = Field(30, ge=3, description="a running job whose worker is silent this long is worker_lost")
    state_dir: Path = Field(Path("var"), description="where `up` keeps the embedded Redis's files")

    # upload limits
    max_upload_bytes: int = Field(20_000_000, ge=1, description="largest accepted upload (413 above)")
    max_pixels: int = Field(40_000_000, ge=1, description="largest accepted width x height, read from the header")
    min_side: int = Field(64, ge=1, description="smallest accepted width or height")
    max_concurrent_checks: int = Field(
        2, ge=1, description="uploads the API checks at once; the rest wait (bounds its memory)"
    )
    decode_budget_bytes: int = Field(
        600_000_000, ge=1, description="the worker refuses to decode a photo whose pixels would need more memory"
    )
    redis_retry_seconds: float = Field(
        300.0, ge=0, description="how long a worker retries a Redis write (backoff) before giving the job up"
    )

    # webhooks
    webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="comma-separated `tenant:secret` pairs: the key each tenant's callbacks are signed with "
        "(`anonymous:secret` when no API keys are configured)",
    )
    callback_allow: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma-separated hosts a callback may reach over plain http or at a private address"
    )
    callback_timeout_seconds: float = Field(10.0, gt=0, description="how long one callback POST may take")
    callback_retry_base_seconds: float = Field(
        15.0, gt=0, description="wait before the first retry of a failed callback; doubled each time (up to 15 min)"
    )
    callback_retry_window_seconds: float = Field(
        3600.0, ge=0, description="failed callbacks are retried until this long after the first attempt"
    )

    # models and compute
    pipeline: str = Field(
        "worker.pipeline.portrait:edit_portrait",
        description="module:function the worker runs for each job (tests and plugins swap it)",
    )
    model_dir: Path = Field(
        Path(model_store.__file__).resolve().parent, description="where model weights are stored and pulled to"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device of the worker")
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32",
        description="generator precision: fp16 = NVIDIA's float16 blocks (CUDA); bf16 = generator and VGG under "
        "bfloat16 autocast in the optimisation loops, codes and Adam state in float32",
    )
    tf32: bool = Field(True, description="CUDA: TF32 tensor cores for float32 convolutions and matmuls")
    capture: Literal["auto", "off"] = Field(
        "auto",
        description="auto: on CUDA the inversion and diffuse loops capture one optimisation step as a CUDA graph after "
        "a few eager steps and replay it (unverified on a GPU so far); off: every step eager. The CPU is always eager",
    )
    worker_batch: int = Field(
        1, ge=1, le=64, description="jobs one worker process runs at once; their inversions share GPU batches"
    )
    batch_wait_ms: float = Field(
        20.0, ge=0, description="how long the GPU batcher waits for more jobs' crops before running a batch"
    )
    landmark_backend: Literal["dlib", "fan"] = Field("dlib", description="face landmark model")
    invert_preset: Literal["fast", "quality", "paper"] = Field("fast", description="inversion schedule")
    invert_steps: int | None = Field(None, ge=1, description="override the inversion preset's number of steps")
    invert_space: Literal["w", "wplus"] = Field(
        "w", description="latent space of the inversion: w (the projector's) or wplus (one w per style layer)"
    )
    diffuse_steps: int = Field(100, ge=1, description="Adam steps of the diffuse refinement")
    diffuse_lr: float = Field(0.01, gt=0, description="learning rate of the diffuse refinement")
    diffuse_perceptual_weight: float = Field(
        1e-4,
        ge=0,
        description="weight of diffuse's VGG16 relu4_3 feature MSE (the seed's perceptual model and weight)",
    )
    edit_margin: float = Field(
        2.5,
        description="target mean chin score after a full-strength adaptive edit (negative side); "
        "2.5 gives the seed's 7 real codes a mean alpha of -5, the seed's fixed one",
    )
    no_chin_threshold: float = Field(0.0, description="a face scoring below this is left unedited")
    fixed_alpha: float | None = Field(
        None, le=0, description="edit with this alpha (the seed used -5) instead of adaptively"
    )
    condition_pose: bool = Field(
        False, description="remove the yaw component from the edit direction (needs pose_yaw_boundary)"
    )
    fine_boundary: Path | None = Field(
        None, description="fine boundary (1 x num_ws x w_dim .npy) to edit with instead of the model store's"
    )
    fine_intercept: Path | None = Field(None, description="its intercepts (num_ws x 1 .npy); set both or neither")

    # quality gate (README: "Quality facts and the quality gate" says how the defaults were chosen)
    min_identity: float = Field(
        0.95, ge=-1, le=1, description="least cosine similarity of the original's and the edit's face descriptors"
    )
    max_neck_lpips: float = Field(
        0.4, ge=0, description="largest LPIPS of the reconstruction against the photo inside the neck mask"
    )
    quality_policy: QualityPolicy = Field(
        QualityPolicy.RETURN_ORIGINAL, description="what an edit failing the gate becomes: return_original, fail, report"
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(ApiKey.parse(entry) for entry in value.split(",") if entry.strip())
        return value

    @field_validator("webhook_secrets", "callback_allow", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(entry.strip() for entry in value.split(",") if entry.strip())
        return value

    @field_validator("trusted_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(host.strip().lower() for host in value.split(",") if host.strip())
        return value

    @model_validator(mode="after")
    def _boundary_pair(self) -> Settings:
        if (self.fine_boundary is None) != (self.fine_intercept is None):
            raise ValueError("CHINFIX_FINE_BOUNDARY and CHINFIX_FINE_INTERCEPT go together: set both or neither")
        return self

    @property
    def effective_training_queue(self) -> str:
        return self.training_queue or f"{self.queue_name}-training"

    @property
    def callback_queue_name(self) -> str:
        """The RQ queue of webhook deliveries, drained by `chinfix callbacks` (torch-free)."""
        return f"{self.queue_name}-callbacks"

    def webhook_secret(self, tenant: str) -> str | None:
        for pair in self.webhook_secrets:
            name, _, secret = pair.get_secret_value().partition(":")
            if name == tenant and secret:
                return secret
        return None

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL
