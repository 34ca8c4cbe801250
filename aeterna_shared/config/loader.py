"""The one boundary where configuration is read: a YAML file, then env overrides.

Env overrides name a key by its snake_case path in upper case, segments joined
by a double underscore and prefixed with ``AETERNA_``; for example
``AETERNA_SYNC__BATCH__MAX_SIZE=50`` sets ``sync.batch.maxSize``. Every error
names the key (in the YAML's camelCase spelling) and says what was expected.

Relative paths: a path key written in a config file (``edge.dataDir``,
``central.dataDir``, ``tls.certFile``, ``sync.signing.keyFile``, ... every
field of the model whose name ends in ``_dir``, ``_file`` or ``_path``, see
``path_keys``) is relative to that file's folder, so that
``aeterna edge --config examples/edge.yaml`` works from any directory. A path
given through an env override is relative to the current directory, as on a
command line; both become absolute at load. Defaults (``var/edge``, ...) stay
as they are and so are relative to the current directory when used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from aeterna_shared.config.model import AeternaConfig
from aeterna_shared.errors import AeternaError

ENV_PREFIX = "AETERNA_"
_PATH_SUFFIXES = ("_dir", "_file", "_path")
# Variables with the prefix that are not key overrides.
_RESERVED_ENV = frozenset({"AETERNA_CONFIG", "AETERNA_HOME", "AETERNA_API_KEY"})


class ConfigError(AeternaError):
    """The configuration is not valid; the message names every bad key."""

    reason = "INVALID_CONFIG"


def env_name(path: tuple[str, ...]) -> str:
    """The environment variable that overrides the key at ``path`` (snake_case field names)."""
    return ENV_PREFIX + "__".join(segment.upper() for segment in path)


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> AeternaConfig:
    """Read ``path`` (YAML) if given, apply overrides from ``environ``, validate."""
    document: dict[str, Any] = {}
    if path is not None:
        document = _read_yaml(Path(path))
        _absolute_paths(document, Path(path).absolute().parent)
    env = os.environ if environ is None else environ
    for name, raw in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and name not in _RESERVED_ENV:
            _apply_override(document, name, raw)
    # The file's paths are absolute by now: what is still relative came from the environment.
    _absolute_paths(document, Path.cwd())
    try:
        return AeternaConfig.model_validate(document)
    except ValidationError as error:
        raise ConfigError(_describe(error, path)) from None


def path_keys(model: type[BaseModel] = AeternaConfig) -> list[tuple[str, ...]]:
    """Field-name paths of every path-typed key: fields named ``*_dir``, ``*_file`` or ``*_path``."""
    found: list[tuple[str, ...]] = []
    for name, field in model.model_fields.items():
        nested = _section(field)
        if nested is not None:
            found += [(name, *rest) for rest in path_keys(nested)]
        elif name.endswith(_PATH_SUFFIXES):
            found.append((name,))
    return found


def _section(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _absolute_paths(document: dict[str, Any], base: Path) -> None:
    """Make every relative path key in ``document`` (YAML or env spelling) absolute against ``base``."""
    for keys in path_keys():
        _absolute_at(document, AeternaConfig, keys, base)


def _absolute_at(target: Any, model: type[BaseModel], keys: tuple[str, ...], base: Path) -> None:
    if not isinstance(target, dict):
        return
    field = model.model_fields[keys[0]]
    # The YAML may use the camelCase alias or (populate_by_name) the field name itself.
    for spelling in {field.alias or keys[0], keys[0]}:
        if spelling not in target:
            continue
        value = target[spelling]
        if len(keys) > 1:
            nested = _section(field)
            if nested is not None:
                _absolute_at(value, nested, keys[1:], base)
        elif isinstance(value, str) and value and not Path(value).is_absolute():
            target[spelling] = str(base / value)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of keys at the top level")
    return loaded


def _apply_override(document: dict[str, Any], name: str, raw: str) -> None:
    """Set the key that env var ``name`` names, validating the path against the model."""
    segments = name.removeprefix(ENV_PREFIX).split("__")
    model: type[BaseModel] | None = AeternaConfig
    target = document
    for index, segment in enumerate(segments):
        if model is None:
            raise ConfigError(f"{name}: {'.'.join(segments[:index])} has no sub-keys")
        field_name = next((f for f in model.model_fields if f.upper() == segment), None)
        if field_name is None:
            raise ConfigError(f"{name}: no configuration key matches {segment!r} under {model.__name__}")
        field = model.model_fields[field_name]
        alias = field.alias or field_name
        annotation = field.annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if index == len(segments) - 1:
            target[alias] = _parse_env_value(raw)
        else:
            child = target.get(alias)
            if not isinstance(child, dict):
                child = {}
                target[alias] = child
            target = child


def _parse_env_value(raw: str) -> Any:
    """JSON lists and objects are parsed; everything else stays a string for the model to coerce."""
    stripped = raw.strip()
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return raw
    return raw


def _describe(error: ValidationError, path: str | Path | None) -> str:
    source = f" in {path}" if path else ""
    lines = [f"invalid configuration{source}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see docs/configuration.md)"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)
