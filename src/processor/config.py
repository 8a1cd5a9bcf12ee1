"""Configuration of ``fc-stream-processor`` from the environment, with the spec's
names and defaults. Parsed by pydantic-settings; a bad value fails at start
with one line naming the variable."""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, NoReturn, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pymongo import uri_parser
from pymongo.errors import ConfigurationError, InvalidURI

from processor.stores.base import BATCH_BYTES, MAX_EVENT_BYTES
from processor.stores.mongo import CATCH_UP_SKEW
from processor.targets import TargetPolicy, parse_networks

SHUTDOWN_GRACE_SECONDS = 20.0  # after a stop request, how long the batch in hand may take

LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "critical")


@dataclass(frozen=True)
class Thresholds:
    """When /health says DOWN; see ``processor.health``."""

    disconnected_grace: float = 30.0
    max_lag: float = 60.0
    max_error_rate: float = 0.5
    window: float = 60.0
    min_operations: int = 5
    stall: float = 60.0


class OneLineParser(argparse.ArgumentParser):
    """A bad flag is one line and exit 2, as every configuration error is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


class ConfigError(Exception):
    """Configuration that cannot work; the message is one line for the operator."""


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class TargetSettings(BaseSettings):
    """Which webhook targets subscriptions may have (``processor.targets``): read by
    ``fc-stream-processor`` and ``fc-dev`` alike."""

    model_config = SettingsConfigDict(env_prefix="FC_", case_sensitive=False, extra="ignore")

    target_policy: Literal["internal", "public"] = "internal"
    target_networks: str = ""

    @field_validator("target_networks")
    @classmethod
    def _networks(cls, text: str) -> str:
        parse_networks(text)
        return text

    def targets(self) -> TargetPolicy:
        return TargetPolicy(self.target_policy, parse_networks(self.target_networks))


class Config(TargetSettings):
    mongo_url: str = "mongodb://localhost:27017"
    mongo_db: Annotated[str, Field(min_length=1)] = "flowcatalyst"
    metrics_host: Annotated[str, Field(min_length=1)] = "0.0.0.0"  # containers publish it
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9090
    stream_batch_size: Annotated[int, Field(ge=1, le=10_000)] = 100
    stream_batch_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = BATCH_BYTES
    stream_max_event_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = MAX_EVENT_BYTES
    stream_resume_token_key: Annotated[str, Field(min_length=1)] = "stream-processor"
    mongo_catch_up_skew_seconds: Annotated[float, Field(ge=0, le=86_400)] = CATCH_UP_SKEW.total_seconds()
    redis_url: str | None = None
    log_level: str | None = None  # FC_LOG_LEVEL; RUST_LOG is read when it is unset

    standby_enabled: bool = False
    standby_redis_url: str | None = None
    standby_lock_key: Annotated[str, Field(min_length=1)] = "stream-processor-lock"
    standby_instance_id: Annotated[str, Field(min_length=1)] = Field(default_factory=default_instance_id)
    standby_lock_ttl_ms: Annotated[int, Field(ge=1000)] = 10_000
    standby_renew_interval_ms: Annotated[int, Field(ge=100)] = 3_000

    health_disconnected_grace_seconds: Annotated[float, Field(gt=0)] = 30.0
    health_max_lag_seconds: Annotated[float, Field(gt=0)] = 60.0
    health_max_error_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    health_window_seconds: Annotated[float, Field(gt=0)] = 60.0
    health_stall_seconds: Annotated[float, Field(gt=0)] = 60.0
    shutdown_grace_seconds: Annotated[float, Field(gt=0)] = SHUTDOWN_GRACE_SECONDS

    @field_validator("mongo_url")
    @classmethod
    def _store_url(cls, url: str) -> str:
        scheme = url.partition("://")[0]
        if scheme == "sqlite":
            embedded_file(url)
        elif scheme in ("mongodb", "mongodb+srv"):
            check_mongo_url(url)
        else:
            raise ValueError("must be a mongodb://, mongodb+srv:// or sqlite:///path URL")
        return url

    @field_validator("redis_url", "standby_redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url is not None and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return url

    def thresholds(self) -> Thresholds:
        return Thresholds(
            disconnected_grace=self.health_disconnected_grace_seconds,
            max_lag=self.health_max_lag_seconds,
            max_error_rate=self.health_max_error_rate,
            window=self.health_window_seconds,
            stall=self.health_stall_seconds,
        )

    @property
    def embedded_path(self) -> str | None:
        """The SQLite file when ``FC_MONGO_URL`` names the embedded store."""
        return embedded_file(self.mongo_url) if self.mongo_url.startswith("sqlite:") else None

    def level(self) -> int:
        """``FC_LOG_LEVEL``, else the default level of ``RUST_LOG`` (``info``,
        ``warn,fc_stream=debug``...), so existing deployment manifests keep working."""
        text = self.log_level or default_level(os.environ.get("RUST_LOG", "")) or "info"
        name = text.lower()
        if name not in LOG_LEVELS:
            raise ConfigError(f"FC_LOG_LEVEL / RUST_LOG: unknown level {text!r}; use one of {LOG_LEVELS}")
        return {"trace": logging.DEBUG, "warn": logging.WARNING}.get(name) or logging.getLevelName(
            name.upper()
        )


def default_level(rust_log: str) -> str | None:
    """The bare level of a RUST_LOG directive list, ignoring per-module ones."""
    bare = [part.strip() for part in rust_log.split(",") if part.strip() and "=" not in part]
    return bare[-1] if bare else None


S = TypeVar("S", bound=BaseSettings)


def load() -> Config:
    return load_settings(Config)


def load_settings(settings: type[S]) -> S:
    """``settings`` from the environment; ``ConfigError`` names each variable at fault."""
    try:
        return settings()
    except ValidationError as error:
        problems = []
        for detail in error.errors(include_url=False, include_input=False):
            variable = "FC_" + "_".join(str(part) for part in detail["loc"]).upper()
            problems.append(f"{variable}: {detail['msg'].removeprefix('Value error, ')}")
        raise ConfigError("; ".join(problems)) from None


def embedded_file(url: str) -> str:
    """The file of a ``sqlite:///path`` URL, whose directory must exist."""
    parts = urlsplit(url)
    if parts.netloc:
        raise ValueError(
            f"sqlite://{parts.netloc}{parts.path} names a host ({parts.netloc!r}); "
            "write sqlite:///path, with three slashes, for a file"
        )
    if not parts.path or parts.path.endswith("/"):
        raise ValueError("must name a file: sqlite:///path/to/file.db")
    return in_existing_directory(parts.path)


def in_existing_directory(path: str) -> str:
    """``path``, if the directory it would be in exists: SQLite creates a file, not its directory."""
    directory = Path(path).parent
    if not directory.is_dir():
        raise ValueError(f"the directory {str(directory)!r} of the store file does not exist")
    return path


def check_mongo_url(url: str) -> None:
    """``url`` as pymongo's own parser reads it, without connecting: a
    ``mongodb+srv://`` URL's host is looked up only when the client connects,
    so its user, password and options are checked here, and its host then."""
    try:
        if url.startswith("mongodb+srv://"):
            rest = url.removeprefix("mongodb+srv://")
            authority, _, query = rest.partition("?")
            userinfo, at, _ = authority.partition("/")[0].rpartition("@")
            if at:
                uri_parser.parse_userinfo(userinfo)
            if query:
                uri_parser.split_options(query, validate=True, warn=False)
        else:
            uri_parser.parse_uri(url, validate=True, warn=False)
    except (InvalidURI, ConfigurationError, ValueError) as error:
        hint = ""
        if "@" in url and "escaped" not in str(error):
            hint = " (a '/', '@' or ':' in a user name or password must be escaped: urllib.parse.quote_plus)"
        raise ValueError(f"is not a MongoDB URL pymongo can read: {error}{hint}") from None


_CREDENTIALS = re.compile(r"(?<=//)([^/@:]*):[^/@]*@")
# Options that carry secrets: passwords (tlsCertificateKeyFilePassword, ...) and
# authMechanismProperties (AWS_SESSION_TOKEN:...).
_SECRET_OPTIONS = re.compile(
    r"(?i)([?&;](?:[a-z]*password|authmechanismproperties|[a-z]*(?:secret|token))=)[^&;]*"
)


def redact(text: str) -> str:
    """``text`` with the passwords and secret options of the URLs in it masked,
    fit for a log line (multi-host URLs too)."""
    return _SECRET_OPTIONS.sub(r"\1***", _CREDENTIALS.sub(r"\1:***@", text))
