"""Service settings: environment variables `MEDIFLOW_*`, overridden by `mediflow serve` flags."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDIFLOW_", extra="ignore")

    model_path: str | None = Field(default=None, description="checkpoint; default: the bundled model")
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    review_below: float = Field(default=0.70, ge=0.0, le=1.0, description="confidence under which needs_review is set")
    # Same-origin only by default; a medical service never answers every origin.
    cors_origins: list[str] = Field(default_factory=list)
    device: str = "cpu"
    # onnx: ONNX Runtime (fast, small; the export next to the checkpoint); auto: onnx when available.
    backend: Literal["auto", "onnx", "torch"] = "auto"
    threads: int | None = Field(default=None, ge=1, description="ONNX Runtime intra-op threads; default: all cores")
