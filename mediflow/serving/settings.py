"""Service settings: environment variables `MEDIFLOW_*`, overridden by `mediflow serve` flags."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDIFLOW_", extra="ignore")

    model_path: str | None = Field(default=None, description="checkpoint; default: the bundled model")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_upload_bytes: int = Field(default=20 * MB, gt=0, description="largest accepted upload (413 above)")
    # Uploads share a budget of max_uploads_in_flight x max_upload_bytes, charged by the bytes each
    # has sent (+ a copy while it is parsed): with the defaults, at most 16 x 2 x 20 MB = 640 MB of
    # upload buffers (see serving/limits.py).
    max_uploads_in_flight: int = Field(default=16, ge=1, description="full-size uploads held in memory at once "
                                       "(read, queued or analysed); 503 with Retry-After beyond")
    min_upload_rate: float = Field(default=1024.0, ge=0, description="bytes/s an upload must average after "
                                   "its first 10 s (408 below); 0: no minimum")
    retry_after_s: int = Field(default=5, ge=1, le=3600, description="Retry-After (seconds) sent with a busy 503")
    upload_timeout_s: float = Field(default=120.0, gt=0, description="seconds a client has to send the whole "
                                    "upload body (408 after)")
    header_timeout_s: float = Field(default=10.0, gt=0, le=600, description="seconds a client has to send a "
                                    "request's headers (408 after)")
    max_pixels: int = Field(default=50_000_000, gt=0, description="largest accepted image (decompression bombs)")
    review_below: float = Field(default=0.70, ge=0.0, le=1.0, description="confidence under which needs_review is set")
    # Same-origin only by default; a medical service never answers every origin.
    # NoDecode: MEDIFLOW_CORS_ORIGINS may be a comma-separated list as well as a JSON list.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    device: str = "cpu"
    # The clinical workflow (see mediflow/serving/studies.py). No database: nothing is stored.
    database_url: str | None = Field(default=None, description="study store, e.g. sqlite:///path.db; unset: none")
    db_timeout_s: float = Field(default=10.0, gt=0, le=600, description="seconds a request may wait on the study "
                                "database (pool, connect, each transaction); 503 with Retry-After after")
    store_images: bool = Field(default=False, description="keep uploaded bytes in the store (privacy: off)")
    api_keys: str | None = Field(default=None, description="'name:key,name2:key2'; set: /api/* needs a key")
    api_keys_file: str | None = Field(default=None, description="file with one 'name:key' per line")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if isinstance(value, (list, tuple)):
            value = [str(o).strip().rstrip("/") for o in value if str(o).strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if "*" in origin:
                raise ValueError("wildcard CORS origins are not allowed; list each trusted origin")
            if not origin.startswith(("http://", "https://")):
                raise ValueError(f"CORS origin {origin!r} must look like https://host[:port]")
        return origins
    # onnx: ONNX Runtime (fast, small; the export next to the checkpoint); auto: onnx when available.
    backend: Literal["auto", "onnx", "torch"] = "auto"
    threads: int | None = Field(default=None, ge=1, description="ONNX Runtime intra-op threads while uploads follow "
                                "one another; default: all cores (one after an idle spell, spinning only within a run)")
