"""Load a pydantic-settings model from a TOML file plus environment, with errors that name the key and the file."""

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

S = TypeVar("S", bound="FileSettings")


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the file and the key."""


class FileSettings(BaseSettings):
    """Settings read from a TOML file; ``ECOTEL_<SECTION>__<KEY>`` variables override the file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init kwargs; the environment must win
        # over it so that a deployment can override one key without a copy.
        return (env_settings, init_settings)


def read_toml(path: Path) -> dict[str, Any]:
    """A configuration file's tables; ConfigError naming the file if it is missing or not TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:  # a directory, no permission, an I/O error
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None


def load_settings(cls: type[S], path: Path) -> S:
    """Read ``path`` (TOML) into ``cls``, environment overriding; ConfigError on any problem."""
    return build_settings(cls, read_toml(path), source=str(path))


def build_settings(cls: type[S], data: dict[str, Any], *, source: str) -> S:
    """Validate already-parsed settings; ``source`` names where they came from in errors."""
    try:
        return cls(**data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(cls, exc, source)) from None


def describe_errors(cls: type[BaseSettings], exc: ValidationError, source: str) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    delimiter = str(cls.model_config.get("env_nested_delimiter", "__"))
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors(include_url=False):
        key = ".".join(str(p) for p in err["loc"])
        env = (prefix + delimiter.join(str(p) for p in err["loc"])).upper()
        got = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
        # Keys inside a list (devices.0...) cannot be set from the environment.
        in_list = any(isinstance(p, int) for p in err["loc"])
        hint = f" [key {key}" + (f", or environment {env}]" if prefix and not in_list else "]")
        lines.append(f"  {key}: {err['msg']}{got}{hint}")
    return "\n".join(lines)
