"""Configuration: one pydantic model, resolved from layered sources with provenance.

Precedence, highest first: CLI flags > DBROLLBACK_* environment variables > dbrollback.toml or
[tool.dbrollback] in pyproject.toml > sqlalchemy.url in alembic.ini > defaults (embedded server).
Relative paths are relative to the directory of the file that set them, else the current directory.
"""

from __future__ import annotations

import configparser
import getpass
import json
import os
import sys
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dbrollback.durations import format_duration, parse_duration, parse_optional_duration
from dbrollback.errors import ConfigError
from dbrollback.urls import display_url, parse_database_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "DBROLLBACK_"
SOURCE_DEFAULT = "default"
SOURCE_EMBEDDED = "embedded default"
_ALEMBIC_PLACEHOLDER_SCHEMES = ("driver://",)  # what `alembic init` writes; means "not configured"
_PATH_FIELDS = ("alembic_config", "embedded_pgdata")


SnapshotPolicy = Literal["lossy", "touched", "all", "never"]
LintRuleSetting = Literal["error", "warning", "info", "off"]


class LintSettings(BaseModel):
    """``[tool.dbrollback.lint]`` (or ``[lint]`` in dbrollback.toml)."""

    model_config = ConfigDict(extra="forbid")

    pg_version: int = Field(14, ge=10, le=99, description="PostgreSQL major version the rules assume")
    rules: dict[str, LintRuleSetting] = Field(
        default_factory=dict, description="per-rule severity (error|warning|info) or off"
    )


class Settings(BaseSettings):
    """Effective configuration for one command."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    database_url: str | None = Field(None, description="PostgreSQL URL; none = embedded server")
    alembic_config: Path = Field(Path("alembic.ini"), description="Alembic ini file")
    store: str = Field("file://.dbrollback/snapshots", description="snapshot store URI")
    rollback_window: timedelta = Field(timedelta(days=7), description="how long rollback stays possible")
    lock_timeout: timedelta = Field(timedelta(seconds=5), description="lock_timeout for each revision")
    statement_timeout: timedelta | None = Field(None, description="statement_timeout per revision")
    lock_wait: timedelta = Field(timedelta(seconds=60), description="wait for another run's lock")
    lock_retries: int = Field(3, ge=0, description="retries of a revision that hit lock_timeout")
    actor: str = Field(default_factory=lambda: _os_user(), description="who is running (journal)")
    embedded_pgdata: Path = Field(Path(".dbrollback/pgdata"), description="embedded server data")
    snapshot: SnapshotPolicy = Field(
        "lossy", description="which tables upgrade snapshots first: lossy|touched|all|never"
    )
    jobs: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=64,
                      description="parallel connections for snapshot reads")  # fmt: skip

    lint: LintSettings = Field(
        default_factory=lambda: LintSettings.model_validate({}), description="pg_version, per-rule severity"
    )

    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any,
                                   *args: Any, **kwargs: Any) -> tuple[Any, ...]:  # fmt: skip
        # load_settings() reads every layer itself, to know where each value came from;
        # pydantic-settings must not read the environment a second time behind its back.
        return (init_settings,)

    @field_validator("rollback_window", "lock_timeout", "lock_wait", mode="before")
    @classmethod
    def _duration(cls, value: object) -> timedelta:
        return parse_duration(value)

    @field_validator("statement_timeout", mode="before")
    @classmethod
    def _optional_duration(cls, value: object) -> timedelta | None:
        return parse_optional_duration(value)

    @field_validator("lint", mode="before")
    @classmethod
    def _lint_json(cls, value: object) -> object:
        # DBROLLBACK_LINT='{"pg_version": 15, "rules": {"rename-column": "off"}}'
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError('must be a JSON object such as {"pg_version": 15}') from None
        return value

    @field_validator("database_url", mode="before")
    @classmethod
    def _url(cls, value: object) -> object:
        if isinstance(value, str) and value.strip():
            parse_database_url(value)  # raises ConfigError with a redacted message
        return value or None

    @property
    def sources(self) -> dict[str, str]:
        return dict(self._sources)

    @property
    def uses_embedded(self) -> bool:
        return self.database_url is None

    def display(self) -> dict[str, str]:
        """Every effective value as text, passwords masked."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "database_url":
                out[name] = display_url(value) if value else "(embedded PostgreSQL)"
            elif isinstance(value, timedelta) or (value is None and name.endswith("timeout")):
                out[name] = format_duration(value)
            else:
                out[name] = str(value)
        return out


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container uid without a passwd entry
        return f"uid-{os.getuid()}"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Cannot read {path}: {exc}", path=str(path)) from None


def _file_layer(cwd: Path) -> tuple[dict[str, Any], Path | None]:
    toml_path = cwd / "dbrollback.toml"
    if toml_path.is_file():
        data = _read_toml(toml_path)
        return dict(data.get("dbrollback", data)), toml_path
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        section = _read_toml(pyproject).get("tool", {}).get("dbrollback")
        if isinstance(section, dict):
            return dict(section), pyproject
    return {}, None


def _alembic_ini_url(ini: Path) -> str | None:
    if not ini.is_file():
        return None
    parser = configparser.ConfigParser(defaults={"here": str(ini.parent.resolve())})
    try:
        parser.read(ini, encoding="utf-8")
        raw = parser.get("alembic", "sqlalchemy.url", fallback=None)
    except configparser.Error as exc:
        raise ConfigError(f"Cannot read {ini}: {exc}", path=str(ini)) from None
    if not raw or not raw.strip() or raw.strip().startswith(_ALEMBIC_PLACEHOLDER_SCHEMES):
        return None
    return raw.strip()


def _resolve_path(value: Any, base: Path) -> Any:
    path = Path(os.path.expanduser(str(value)))
    return path if path.is_absolute() else base / path


def _resolve_store(value: str, base: Path) -> str:
    if value.startswith("file://"):
        return "file://" + str(_resolve_path(value[len("file://") :], base))
    if "://" not in value:  # a bare directory
        return "file://" + str(_resolve_path(value, base))
    return value


def load_settings(
    cli: Mapping[str, Any] | None = None,
    *,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings from all layers; records where each value came from."""
    cwd = (cwd or Path.cwd()).resolve()
    environ = os.environ if environ is None else environ
    fields = Settings.model_fields
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    bases: dict[str, Path] = {}

    file_values, file_path = _file_layer(cwd)
    unknown = sorted(set(file_values) - set(fields))
    if unknown:
        raise ConfigError(
            f"Unknown setting(s) {', '.join(unknown)} in {file_path}; known: {', '.join(fields)}",
            path=str(file_path),
        )
    layers: list[tuple[str, Mapping[str, Any], Path]] = [
        ("flag", {k: v for k, v in (cli or {}).items() if v is not None}, cwd),
        (
            "env",
            {k: environ[ENV_PREFIX + k.upper()] for k in fields if ENV_PREFIX + k.upper() in environ},
            cwd,
        ),
    ]
    if file_path is not None:
        layers.append((file_path.name, file_values, file_path.parent))
    for name in fields:
        for label, layer, base in layers:
            if name in layer:
                values[name] = layer[name]
                sources[name] = f"{ENV_PREFIX}{name.upper()}" if label == "env" else label
                bases[name] = base
                break

    for name in _PATH_FIELDS:
        values[name] = _resolve_path(values.get(name, fields[name].default), bases.get(name, cwd))
    values["store"] = _resolve_store(values.get("store", fields["store"].default), bases.get("store", cwd))

    if "database_url" not in values:
        ini_url = _alembic_ini_url(values["alembic_config"])
        if ini_url:
            values["database_url"] = ini_url
            sources["database_url"] = "alembic.ini"
        else:
            sources["database_url"] = SOURCE_EMBEDDED
    for name in fields:
        sources.setdefault(name, SOURCE_DEFAULT)

    try:
        settings = Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])} ({sources.get(str(err['loc'][0]), '?')}): {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"Invalid configuration: {problems}") from None
    settings._sources = sources
    return settings
