"""Service settings: one typed object, read from flags, environment (``ALIGNSERVE_*``) or defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_MODEL = "embedded:qwen2.5-coder-0.5b-instruct"


def default_home() -> Path:
    return Path.home() / ".cache" / "alignserve"


class Settings(BaseSettings):
    """Everything an operator can set. Environment variables use the ``ALIGNSERVE_`` prefix."""

    model_config = SettingsConfigDict(env_prefix="ALIGNSERVE_", extra="ignore")

    # Where the model comes from: the embedded default, a local HF folder, or a hub id.
    model: str = Field(EMBEDDED_MODEL, description="embedded:<name>, a local HF folder, or a hub id")
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers (reference, CPU or GPU) or vllm (GPU, needs vllm==0.26.0)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16", "float64"] = "auto"
    home: Path = Field(default_factory=default_home, description="model cache and default DB live here")
    db_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<home>/profiles.db")

    served_model_name: str | None = Field(
        None, description="the model id clients see (/v1/models, responses, /readyz); default: the embedded "
        "model's name, a local folder's last path component, or the hub id")

    host: str = "127.0.0.1"
    port: int = 8000

    # Serving limits.
    max_model_len: int = Field(4096, ge=16, description="prompt + generated tokens per stream")
    max_tokens_limit: int = Field(1024, ge=1, description="largest max_tokens a request may ask for")
    max_batch_size: int = Field(8, ge=1, description="requests decoded together by the reference engine")
    max_queue: int = Field(64, ge=1, description="requests waiting for the engine before 429")
    max_num_seqs: int = Field(256, ge=2, description="vLLM: requests handed to continuous batching at once "
                              "(an LA request decodes two sequences)")
    compile_concurrency: int = Field(32, ge=0, description="vLLM: requests a profile compile keeps in flight "
                                     "(0: no bound); bounds how much a compile takes from live traffic")
    vllm_pairing: Literal["sync", "async", "off"] = Field(
        "async", description="vLLM: Linear-Alignment pairs under vLLM's async scheduling (async, the "
        "default: every request gets it), with synchronous scheduling for the whole engine (sync: 0.76x "
        "async for plain requests at 7B), or no LA at all (off: LA requests are refused)")
    gpu_memory_utilization: float = Field(0.85, gt=0.05, le=0.98,
                                          description="vLLM: share of GPU memory for weights + KV cache")
    kv_cache_blocks: int | None = Field(None, ge=1, description="vLLM: KV-cache blocks (16 tokens each) "
                                        "instead of what gpu_memory_utilization leaves; at least one "
                                        "max_model_len sequence must fit")
    reward_model: str = Field(
        "auto", description="English reward model for /score method 'reward_model': auto (the shipped "
        "head when serving the embedded model), none, embedded, or a folder/hub id of an HF "
        "sequence-classification RM with one label")
    reward_gpu_memory_utilization: float = Field(
        0.1, gt=0.0, le=0.9, description="vLLM: the reward model's share of GPU memory (added to "
        "--gpu-memory-utilization; both together at most 0.98)")
    reward_load_attempts: int = Field(
        3, ge=1, description="tries to load the reward model before /score reward_model answers 503 for good "
        "(vLLM's start-up memory check fails when other processes on the GPU change their use meanwhile)")
    reward_load_retry_s: float = Field(10.0, ge=0, description="seconds between reward-model load attempts")
    request_timeout_s: float = Field(300.0, gt=0)
    max_jobs: int = Field(16, ge=1, description="profile-compilation jobs queued or running before 429")
    max_body_bytes: int = Field(1_000_000, ge=1024)
    # Slow or hostile clients (see service/api/http_server.py): deadlines and bounds per connection.
    header_timeout_s: float = Field(10.0, gt=0, description="seconds a connection may take to send a "
                                    "request's headers (from connect or the end of the previous response); 408")
    body_timeout_s: float = Field(30.0, gt=0, description="seconds from the headers to the end of the body; 408")
    keep_alive_s: int = Field(5, ge=1, description="idle keep-alive connections are closed after this")
    max_header_bytes: int = Field(16_384, ge=1024, description="request line + headers; 431 beyond")
    max_connections: int = Field(1024, ge=1, description="open connections; requests on more get 503")
    http: Literal["auto", "httptools", "h11"] = Field(
        "auto", description="the HTTP/1.1 parser: auto (httptools when installed), httptools or h11")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="the server's event loop: auto (uvloop when installed), uvloop or asyncio")
    default_system_prompt: str = Field(
        "You are a helpful assistant.",
        description="system message used (in both LA streams) when a request brings none",
    )

    require_api_key: bool = Field(False, description="demand a bearer API key (see `alignserve keys`)")
    rate_limit_per_minute: int = Field(0, ge=0, description="requests per minute per API key; 0 = unlimited")

    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    def resolved_db_url(self) -> str:
        if self.db_url:
            return self.db_url
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.home / 'profiles.db'}"


def served_model_name(settings: Settings) -> str:
    """The model id shown to clients: never a filesystem path unless the operator asks for one."""
    if settings.served_model_name:
        return settings.served_model_name
    model = settings.model
    if model.startswith("embedded:"):
        return model.split(":", 1)[1]
    path = Path(model).expanduser()
    if model.startswith(("/", ".", "~")) or path.exists():
        return path.resolve().name or model
    return model
