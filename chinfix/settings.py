"""All configuration, in one pydantic-settings object read from `CHINFIX_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

import model_store

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHINFIX_", extra="ignore", frozen=True)

    # HTTP
    host: str = Field("127.0.0.1", description="address `serve` and `up` listen on")
    port: int = Field(8000, ge=1, le=65535, description="port `serve` and `up` listen on")
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (), description="comma-separated bearer keys; empty means the API is open (local use only)"
    )
    public_url: str | None = Field(None, description="base URL put in job links; default: the request's own")

    # queue and storage
    redis_url: str | None = Field(
        None, description=f"Redis to use; unset: `up` starts an embedded one, others use {DEFAULT_REDIS_URL}"
    )
    queue_name: str = Field("chinfix", description="RQ queue the API fills and the workers drain")
    key_prefix: str = Field("chinfix", description="prefix of every Redis key chinfix writes")
    job_ttl_seconds: int = Field(86_400, ge=60, description="how long inputs, results and job records are kept")
    max_queued_jobs: int = Field(
        1000, ge=1, description="while this many jobs wait, POST /edit answers 503 queue_full (back-pressure)"
    )
    job_timeout_seconds: int = Field(900, ge=10, description="a job running longer than this fails with job_timeout")
    lease_seconds: int = Field(30, ge=3, description="a running job whose worker is silent this long is worker_lost")
    state_dir: Path = Field(Path("var"), description="where `up` keeps the embedded Redis's files")

    # upload limits
    max_upload_bytes: int = Field(20_000_000, ge=1, description="largest accepted upload (413 above)")
    max_pixels: int = Field(40_000_000, ge=1, description="largest accepted width x height, read from the header")
    min_side: int = Field(64, ge=1, description="smallest accepted width or height")

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

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL
