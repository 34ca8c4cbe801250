"""Generate deploy/helm/aeterna/values.schema.json.

Helm validates values against this schema before rendering, so a misspelt key
fails ``helm install``/``helm template`` instead of a pod at start-up:

* the process-configuration blocks (sync, cache, edge, ...) follow the
  configuration model (aeterna_shared.config.model): every section is an
  object that admits exactly the model's camelCase keys; leaf types are left to
  the model, which the pod applies at start (durations such as "60s" are not
  JSON-schema types);
* the chart's own keys follow values.yaml: every mapping there admits exactly
  the keys it lists, except the free-form ones below (Kubernetes objects,
  labels, annotations, PostgreSQL/PgBouncer parameters). That includes the
  chart-only blocks inside config sections (postgresql.cloudnativepg,
  vectorDatabase.qdrant, tls.certManager), which the model keeps as free dicts;
* blocks that pass through to a CRD (the CloudNativePG backup) follow that
  CRD's own field names (_CNPG_BACKUP below), so a misspelt field fails at
  render time instead of being dropped or refused by the operator later.

    python deploy/tools/gen_values_schema.py           # rewrite the schema
    python deploy/tools/gen_values_schema.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path
from typing import Any

import yaml
from generated_file import write_or_check  # the sibling helper; scripts run from this folder
from pydantic import BaseModel

from aeterna_shared.config import AeternaConfig

CHART = Path(__file__).resolve().parents[1] / "helm" / "aeterna"
SCHEMA = CHART / "values.schema.json"

# Chart-only blocks inside config sections: the chart reads them, the model keeps them as free dicts;
# their schema comes from values.yaml like the chart's own keys.
_CHART_ONLY_CONFIG = {
    ("postgresql", "cloudnativepg"),
    ("vectorDatabase", "qdrant"),
    ("tls", "certManager"),
}

# Accepted as anything: the spec's opal block (no OPAL server is deployed; see values-central.yaml).
_FREE_CONFIG = {("opal",)}

# Chart keys whose contents are Kubernetes objects or free maps.
_FREE_FORM = {
    "podSecurityContext",
    "containerSecurityContext",
    "resources",
    "podAnnotations",
    "podLabels",
    "nodeSelector",
    "affinity",
    "annotations",
    "labels",
    "outlierDetection",
    "requests",
    "limits",
    "parameters",
    "volume",
}

_SECRET_KEY_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "key"],
    "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_COMPRESSION = {"enum": ["bzip2", "gzip", "lz4", "snappy", "xz", "zstd"]}
_ENCRYPTION = {"enum": ["AES256", "aws:kms"]}


def _closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = required
    return schema


# CloudNativePG's .spec.backup (api/v1 BackupConfiguration; barman-cloud's BarmanObjectStoreConfiguration),
# plus the chart's ScheduledBackup keys (schedule, method, immediate).
_CNPG_BACKUP = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "barmanObjectStore": {
            "anyOf": [
                {"type": "null"},
                _closed(
                    {
                        "destinationPath": {"type": "string", "minLength": 1},
                        "endpointURL": {"type": "string"},
                        "endpointCA": _SECRET_KEY_SELECTOR,
                        "serverName": {"type": "string"},
                        "s3Credentials": _closed(
                            {
                                "accessKeyId": _SECRET_KEY_SELECTOR,
                                "secretAccessKey": _SECRET_KEY_SELECTOR,
                                "region": _SECRET_KEY_SELECTOR,
                                "sessionToken": _SECRET_KEY_SELECTOR,
                                "inheritFromIAMRole": {"type": "boolean"},
                            }
                        ),
                        "googleCredentials": _closed(
                            {"applicationCredentials": _SECRET_KEY_SELECTOR, "gkeEnvironment": {"type": "boolean"}}
                        ),
                        "azureCredentials": _closed(
                            {
                                "connectionString": _SECRET_KEY_SELECTOR,
                                "storageAccount": _SECRET_KEY_SELECTOR,
                                "storageKey": _SECRET_KEY_SELECTOR,
                                "storageSasToken": _SECRET_KEY_SELECTOR,
                                "inheritFromAzureAD": {"type": "boolean"},
                                "useDefaultAzureCredentials": {"type": "boolean"},
                            }
                        ),
                        "wal": _closed(
                            {
                                "compression": _COMPRESSION,
                                "encryption": _ENCRYPTION,
                                "maxParallel": {"type": "integer", "minimum": 1},
                                "archiveAdditionalCommandArgs": _STRINGS,
                                "restoreAdditionalCommandArgs": _STRINGS,
                            }
                        ),
                        "data": _closed(
                            {
                                "compression": _COMPRESSION,
                                "encryption": _ENCRYPTION,
                                "jobs": {"type": "integer", "minimum": 1},
                                "immediateCheckpoint": {"type": "boolean"},
                                "additionalCommandArgs": _STRINGS,
                                "restoreAdditionalCommandArgs": _STRINGS,
                            }
                        ),
                        "tags": _STRING_MAP,
                        "historyTags": _STRING_MAP,
                    },
                    ["destinationPath"],
                ),
            ]
        },
        "volumeSnapshot": {
            "anyOf": [
                {"type": "null"},
                _closed(
                    {
                        "className": {"type": "string"},
                        "walClassName": {"type": "string"},
                        "tablespaceClassName": _STRING_MAP,
                        "labels": _STRING_MAP,
                        "annotations": _STRING_MAP,
                        "snapshotOwnerReference": {"enum": ["none", "cluster", "backup"]},
                        "online": {"type": "boolean"},
                        "onlineConfiguration": _closed(
                            {"waitForArchive": {"type": "boolean"}, "immediateCheckpoint": {"type": "boolean"}}
                        ),
                    }
                ),
            ]
        },
        "retentionPolicy": {"type": ["string", "null"], "pattern": "^[1-9][0-9]*[dwm]$"},
        "target": {"enum": [None, "primary", "prefer-standby"]},
        "schedule": {"type": ["string", "null"]},
        "method": {"enum": [None, "barmanObjectStore", "volumeSnapshot"]},
        "immediate": {"type": "boolean"},
    },
}

# Values paths whose schema is written here rather than derived from values.yaml.
_OVERRIDES: dict[tuple[str, ...], dict[str, Any]] = {
    ("postgresql", "cloudnativepg", "cluster", "backup"): _CNPG_BACKUP,
}


def _model_schema(model: type[BaseModel], path: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        sub = (*path, key)
        nested = _model_type(field.annotation)
        if sub in _CHART_ONLY_CONFIG:
            properties[key] = _values_schema(_at(defaults, sub), key, sub)
        elif sub in _FREE_CONFIG or (nested is None and _is_dict(field.annotation)):
            properties[key] = {"type": ["object", "null"]}
        elif nested is not None:
            properties[key] = _model_schema(nested, sub, defaults)
        else:
            properties[key] = {}
    return {"type": ["object", "null"], "additionalProperties": False, "properties": properties}


def _model_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _is_dict(annotation: Any) -> bool:
    return typing.get_origin(annotation) is dict or annotation is dict


def _at(defaults: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = defaults
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if value is not None else {}


def _values_schema(value: Any, key: str, path: tuple[str, ...]) -> dict[str, Any]:
    if path in _OVERRIDES:
        return _OVERRIDES[path]
    if key in _FREE_FORM:
        return {}
    if isinstance(value, dict):
        return {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {k: _values_schema(v, k, (*path, k)) for k, v in value.items()},
        }
    return {}


def build() -> dict[str, Any]:
    """The schema: model-derived config blocks plus values.yaml-derived chart keys."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    config = _model_schema(AeternaConfig, (), defaults)
    properties = dict(config["properties"])
    for key, value in defaults.items():
        if key not in properties:
            properties[key] = _values_schema(value, key, (key,))
    return {
        "$schema": "https://json-schema.org/draft-07/schema#",
        "title": "Aeterna Hybrid chart values (generated by deploy/tools/gen_values_schema.py)",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }


def render() -> str:
    """The schema file's text."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    return write_or_check(SCHEMA, render, __doc__.splitlines()[0], "python deploy/tools/gen_values_schema.py")


if __name__ == "__main__":
    sys.exit(main())
