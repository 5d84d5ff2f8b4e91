"""One settings object, read from the environment and `.env`, validated once at start-up."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from retrieval.database.tables import CLIP_LANE, LANES, OCR_LANE
from retrieval.encoding.precision import CACHE_FILE as PRECISION_CACHE_FILE
from retrieval.errors import ConfigError
from retrieval.indexing.jobs import RetryPolicy
from retrieval.pictures.origins import DISCORD_MEDIA_ORIGINS, MediaOrigins
from retrieval.search.ranking import DUPLICATE_SIMILARITY
from retrieval.store.matrix_budget import DEFAULT_MATRIX_MEMORY_MB

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_DATABASES = ("sqlite+aiosqlite://", "postgresql+asyncpg://")
_SHARD_PART = re.compile(r"^(\d+)(?:-(\d+))?$")
# Downloads at once (in all, and from one host) for an encoder on a GPU, unless set.
GPU_DOWNLOADS = 64


class Settings(BaseSettings):
    """Every field is documented, with its default, in `.env.example`."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    discord_token: SecretStr | None = None
    discord_api_base: str | None = None
    discord_gateway_url: str | None = None
    # Origins image bytes may come from (comma-separated); nothing else is ever fetched.
    discord_media_origins: str = DISCORD_MEDIA_ORIGINS
    # Gateway shards: unset, Discord's recommended count, all in this process. Several processes
    # split one count between them with SHARD_IDS ("0-3", "0,2,5"; unset: every shard).
    shard_count: int | None = Field(default=None, ge=1)
    shard_ids: str | None = None

    database_url: str = "sqlite+aiosqlite:///data/clipfind.db"
    # SQLite: the id this installation's database must carry; set, a missing database is refused
    # even when its whole folder (with the marker file next to it) is gone.
    installation_id: str | None = None
    # SQLite: how often the running bot checks that its database file is still there and the same.
    database_check_interval_s: float = Field(default=15.0, gt=0, le=60)
    # The most connections this process opens to the database, and how long a statement waits
    # for one while all are busy before it counts as an outage (waited out, never a failure).
    database_pool_max: int = Field(default=15, ge=1, le=1000)
    database_pool_timeout_s: float = Field(default=30.0, gt=0)

    clip_model: str = "ViT-B-32"
    clip_pretrained: str | None = "laion2b_s34b_b79k"
    clip_device: str = "auto"
    # auto: fp16 on CUDA; on CPUs with native bf16 instructions the faster of bf16 and fp32,
    # measured at the first start and remembered in CACHE_DIR; fp32 otherwise.
    clip_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Batches the model encodes at once on a CPU, each on its share of the cores. None: two
    # wherever there are two cores (see retrieval/encoding/clip.py). A GPU takes one.
    clip_streams: int | None = Field(default=None, ge=1, le=64)
    # What clipfind measured about this machine (the precision "auto" chose). None:
    # $XDG_CACHE_HOME/clipfind, or ~/.cache/clipfind.
    cache_dir: Path | None = None

    index_bot_messages: bool = False
    max_image_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=50_000_000, gt=0)
    fetch_timeout_s: float = Field(default=20.0, gt=0)
    # None: what the encoder's device needs (see `downloads`).
    fetch_concurrency: int | None = Field(default=None, ge=1, le=1024)
    fetch_per_host: int | None = Field(default=None, ge=1, le=1024)
    fetch_retries: int = Field(default=3, ge=0, le=10)
    # Ask Discord's media proxy for a copy the size the model needs (off: the original always).
    fetch_resized: bool = True
    # None picks a size measured for the device (see retrieval/encoding/clip.py).
    batch_size: int | None = Field(default=None, ge=1, le=1024)
    batch_deadline_ms: int = Field(default=50, ge=0, le=10_000)
    queue_size: int = Field(default=256, ge=1)
    # None: one per core but one, left to the model (on 2 cores both decoding threads only
    # slowed the encoder; see benchmarks/RESULTS.md).
    decode_threads: int | None = Field(default=None, ge=1, le=64)

    # --- Words inside pictures (retrieval/indexing/reading.py) ---
    # Read the words in every picture (OCR), so /find finds them by what they say. off: nothing
    # is read from then on, and the words stored are deleted at the next start.
    ocr: bool = True
    # Cores one reading may use, and where it runs (cuda needs onnxruntime-gpu).
    ocr_threads: int = Field(default=1, ge=1, le=64)
    ocr_device: Literal["cpu", "cuda", "auto"] = "cpu"
    # The lanes of the queue this process takes, comma-separated: clip (vectors), ocr (words).
    # A CPU box may read beside a GPU box that encodes: WORKER_LANES=ocr on one, clip on the other.
    worker_lanes: str = "clip,ocr"

    # Images that fail for a while (CDN trouble) wait in the database and are retried with
    # exponential backoff from RETRY_FIRST_S up to RETRY_MAX_S, for RETRY_FOR_HOURS.
    retry_first_s: float = Field(default=30.0, gt=0)
    retry_max_s: float = Field(default=3600.0, gt=0)
    retry_for_hours: float = Field(default=48.0, gt=0)
    # How long a claimed image is reserved for one process; a process that dies lets it go then.
    job_lease_s: float = Field(default=300.0, ge=1)
    # On SIGTERM/SIGINT: how long the whole stop may take, batches being encoded finishing
    # included; the rest is handed back to the queue. Below Docker's default 10 s grace.
    shutdown_deadline_s: float = Field(default=7.0, ge=0)

    backfill: bool = True
    backfill_channels_at_once: int = Field(default=2, ge=1, le=16)
    # None reads history back to the beginning of every channel.
    backfill_max_age_days: int | None = Field(default=None, ge=1)

    find_default_count: int = Field(default=5, ge=1, le=10)
    # How long result buttons stay usable after the last press. An interaction token lives 15
    # minutes and disabling the buttons needs one, so at most 14.
    find_page_timeout_s: float = Field(default=840.0, gt=0, le=840)
    # Cosine similarity above which two images count as one reposted picture (model dependent).
    find_duplicate_threshold: float = Field(default=DUPLICATE_SIMILARITY, gt=0, le=1)

    # How long a server's vectors are kept after the bot leaves it; 0 purges at once.
    guild_purge_grace_hours: float = Field(default=0, ge=0, le=24 * 365)

    log_level: str = "INFO"

    # SQLite: memory for the servers' search matrices, in MB; the least recently searched
    # servers make way and are loaded again when searched.
    matrix_memory_mb: float = Field(default=DEFAULT_MATRIX_MEMORY_MB, gt=0)

    # --- Operator view (retrieval/runtime/operating.py) ---
    # Serve Prometheus figures on http://METRICS_ADDR:METRICS_PORT/metrics; None: no server.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_addr: str = "0.0.0.0"
    # Serve GET /healthz (200, or 503 with the reason) on http://METRICS_ADDR:HEALTH_PORT; the
    # metrics server serves it too. None: only there.
    health_port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        if self.health_port is not None and self.health_port == self.metrics_port:
            raise ValueError(
                "HEALTH_PORT is METRICS_PORT: the metrics server serves /healthz already; leave "
                "HEALTH_PORT unset, or give it another port"
            )
        return self

    def engine_options(self) -> dict[str, float]:
        """The connection pool's limits, for `retrieval.database.engine.create_engine`."""
        return {
            "pool_max": self.database_pool_max,
            "pool_timeout_s": self.database_pool_timeout_s,
        }

    @field_validator(
        "discord_token",
        "installation_id",
        "metrics_port",
        "health_port",
        "cache_dir",
        "shard_count",
        "fetch_concurrency",
        "fetch_per_host",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `METRICS_PORT=` in .env (as `.env.example` ships them) means not set, like an absent
        # one: no token to try, the default folder, Discord's shard count, no metrics server,
        # the downloads the device needs.
        # (Not pydantic-settings' env_ignore_empty: an empty CLIP_PRETRAINED means random init.)
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("discord_token", "installation_id", mode="before")
    @classmethod
    def _stripped(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    @field_validator("shard_ids")
    @classmethod
    def _shard_ids(cls, value: str | None) -> str | None:
        value = (value or "").strip() or None
        if value is not None:
            parse_shard_ids(value)  # its ValueError says what is wrong
        return value

    @model_validator(mode="after")
    def _shards_fit(self) -> Settings:
        ids = self.shard_id_list()
        if ids is None:
            return self
        if self.shard_count is None:
            raise ValueError(
                "SHARD_IDS needs SHARD_COUNT: the processes that split the shards must agree on "
                "their number"
            )
        beyond = [i for i in ids if i >= self.shard_count]
        if beyond:
            raise ValueError(
                f"SHARD_IDS {self.shard_ids} names shard {beyond[0]}, but with SHARD_COUNT "
                f"{self.shard_count} shards run from 0 to {self.shard_count - 1}"
            )
        return self

    @field_validator("worker_lanes")
    @classmethod
    def _lanes(cls, value: str) -> str:
        lanes = [part.strip().lower() for part in value.split(",") if part.strip()]
        unknown = [lane for lane in lanes if lane not in LANES]
        if unknown or not lanes:
            raise ValueError(
                f"names lanes {', '.join(unknown) or '(none)'}; the lanes are {', '.join(LANES)}"
            )
        return ",".join(dict.fromkeys(lanes))

    @model_validator(mode="after")
    def _some_lane(self) -> Settings:
        # Reading off takes the OCR lane away: a process told to take nothing else would idle.
        if not self.lanes():
            raise ValueError(
                "WORKER_LANES=ocr takes only the OCR lane, and OCR=off turns reading off: this "
                "process would take no job. Set OCR=on to read the words in pictures, or "
                "WORKER_LANES=clip to encode images"
            )
        return self

    def lanes(self) -> frozenset[str]:
        """The lanes of the queue this process takes: reading only while OCR is on."""
        taken = frozenset(self.worker_lanes.split(","))
        return taken if self.ocr else taken - {OCR_LANE}

    @field_validator("clip_device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:<n>'")
        return value

    @field_validator("discord_media_origins")
    @classmethod
    def _media_origins(cls, value: str) -> str:
        MediaOrigins.parse(value)  # its ValueError names the bad entry
        return value

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        if not value.startswith(_DATABASES):
            raise ValueError(f"must start with one of {', '.join(_DATABASES)}")
        return value

    @field_validator("clip_pretrained")
    @classmethod
    def _pretrained(cls, value: str | None) -> str | None:
        # An empty value means random init (useful for benchmarks), not the default tag.
        return value or None

    def shard_id_list(self) -> list[int] | None:
        """The shards this process runs; None: every shard of the count."""
        return parse_shard_ids(self.shard_ids) if self.shard_ids else None

    def precision_cache(self) -> Path:
        """The file where "auto" remembers which precision was faster on this machine."""
        if self.cache_dir is not None:
            return self.cache_dir / PRECISION_CACHE_FILE
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
        base = Path(xdg) if xdg else Path.home() / ".cache"
        return base / "clipfind" / PRECISION_CACHE_FILE

    def downloads(self, *, gpu: bool) -> tuple[int, int]:
        """FETCH_CONCURRENCY and FETCH_PER_HOST, or where unset what the encoder's rate needs.
        Downloads in flight cap a process at that many per round trip to the CDN, and Discord's
        pictures come from one or two hosts: 4 at once at 50 ms is 80 images/s, room to spare
        for a CPU's tens; a GPU's hundreds to thousands need 64 (benchmarks/RESULTS.md,
        "Downloads in flight")."""
        total = self.fetch_concurrency or (GPU_DOWNLOADS if gpu else 8)
        return total, self.fetch_per_host or (GPU_DOWNLOADS if gpu else 4)

    def media_origins(self) -> MediaOrigins:
        return MediaOrigins.parse(self.discord_media_origins)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            first_s=self.retry_first_s,
            max_s=max(self.retry_max_s, self.retry_first_s),
            give_up_after_s=self.retry_for_hours * 3600,
        )

    def sqlite_path(self) -> Path | None:
        url = make_url(self.database_url)
        if url.get_backend_name() != "sqlite":
            return None
        return None if url.database in (None, "", ":memory:") else Path(url.database)

    # --- Several processes: gateway processes and encoder workers (`python -m bot worker`) ---
    # false: this process only queues images (and encodes the text of searches); workers take
    # the queued images from the database and encode them. Needs PostgreSQL.
    encode_images: bool = True

    def encoding_problem(self) -> str | None:
        """Why this process could not work as configured with several processes, or None."""
        if not self.database_url.startswith("sqlite"):
            return None
        if not self.encode_images:
            return (
                "ENCODE_IMAGES=false leaves encoding to `python -m bot worker` processes, and "
                "SQLite serves one process only, so nothing would ever encode the images: set "
                "ENCODE_IMAGES=true, or use PostgreSQL (DATABASE_URL=postgresql+asyncpg://...)"
            )
        if CLIP_LANE not in self.lanes():
            return (
                f"WORKER_LANES={self.worker_lanes} leaves encoding to other processes, and SQLite "
                "serves one process only, so nothing would ever encode the images: add clip to "
                "WORKER_LANES, or use PostgreSQL (DATABASE_URL=postgresql+asyncpg://...)"
            )
        return None


def parse_shard_ids(value: str) -> list[int]:
    """`0-3`, `0,2,5` or both (`0-3,8`) as a sorted list without repeats."""
    ids: set[int] = set()
    for part in value.split(","):
        match = _SHARD_PART.match(part.strip())
        if not match:
            raise ValueError(
                f"{part.strip()!r} is not a shard number or range: write e.g. 0-3 or 0,2,5"
            )
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise ValueError(f"the range {part.strip()} runs backwards: write {last}-{first}")
        ids.update(range(first, last + 1))
    return sorted(ids)


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning pydantic's report into one readable error."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        # A check across settings has no single field; its message names the settings itself.
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else f"  {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError("invalid settings:\n" + "\n".join(lines)) from None
