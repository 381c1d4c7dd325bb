"""Service settings: environment variables `MEDIFLOW_*`, overridden by `mediflow serve` flags."""

from __future__ import annotations

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
    # The clinical workflow (see mediflow/serving/studies.py). No database: nothing is stored.
    database_url: str | None = Field(default=None, description="study store, e.g. sqlite:///path.db; unset: none")
    store_images: bool = Field(default=False, description="keep uploaded bytes in the store (privacy: off)")
    api_keys: str | None = Field(default=None, description="'name:key,name2:key2'; set: /api/* needs a key")
    api_keys_file: str | None = Field(default=None, description="file with one 'name:key' per line")
