"""Small structural schemas for the CRD kinds the chart renders.

kubernetes-validate only knows built-in kinds. These schemas cover the fields
the chart writes for CloudNativePG, cert-manager, Prometheus Operator, Istio
and Gateway API resources: required fields, value types and enums, and - where the chart
writes a whole block - no unknown keys, so a typo in a template fails. They are
written from the projects' API references, not generated from the CRDs.
"""

from __future__ import annotations

from typing import Any

_STR = {"type": "string", "minLength": 1}
_INT = {"type": "integer"}
_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR = {
    "type": "object",
    "required": ["matchLabels"],
    "additionalProperties": False,
    "properties": {"matchLabels": _LABELS},
}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
                    "labels": _LABELS,
                    "annotations": _LABELS,
                },
            },
            "spec": spec,
        },
    }


CNPG_CLUSTER = _resource(
    "postgresql.cnpg.io/v1",
    "Cluster",
    {
        "type": "object",
        "required": ["instances", "storage", "bootstrap"],
        "additionalProperties": False,
        "properties": {
            "instances": {"type": "integer", "minimum": 1},
            "imageName": _STR,
            "primaryUpdateStrategy": {"enum": ["supervised", "unsupervised"]},
            "postgresql": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    # CloudNativePG refuses shared_preload_libraries among the parameters.
                    "parameters": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "not": {"required": ["shared_preload_libraries"]},
                    },
                    "shared_preload_libraries": {"type": "array", "items": _STR},
                },
            },
            "bootstrap": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "initdb": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "database": _STR,
                            "owner": _STR,
                            "postInitApplicationSQL": {"type": "array", "items": _STR},
                        },
                    }
                },
            },
            "storage": {
                "type": "object",
                "required": ["size"],
                "additionalProperties": False,
                "properties": {"size": _STR, "storageClass": _STR},
            },
            "resources": {"type": "object"},
            "affinity": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"enablePodAntiAffinity": {"type": "boolean"}, "topologyKey": _STR},
            },
            "monitoring": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"enablePodMonitor": {"type": "boolean"}},
            },
            "backup": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "barmanObjectStore": {
                        "type": "object",
                        "required": ["destinationPath"],
                        "additionalProperties": False,
                        "properties": {
                            "destinationPath": _STR,
                            "endpointURL": _STR,
                            "endpointCA": {"$ref": "#/$defs/secretKeySelector"},
                            "serverName": _STR,
                            "s3Credentials": {"type": "object"},
                            "googleCredentials": {"type": "object"},
                            "azureCredentials": {"type": "object"},
                            "wal": {"type": "object"},
                            "data": {"type": "object"},
                            "tags": _LABELS,
                            "historyTags": _LABELS,
                        },
                    },
                    "volumeSnapshot": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "className": _STR,
                            "walClassName": _STR,
                            "tablespaceClassName": _LABELS,
                            "labels": _LABELS,
                            "annotations": _LABELS,
                            "snapshotOwnerReference": {"enum": ["none", "cluster", "backup"]},
                            "online": {"type": "boolean"},
                            "onlineConfiguration": {"type": "object"},
                        },
                    },
                    "retentionPolicy": {"type": "string", "pattern": r"^[1-9][0-9]*[dwm]$"},
                    "target": {"enum": ["primary", "prefer-standby"]},
                },
            },
        },
    },
)
CNPG_CLUSTER["$defs"] = {
    "secretKeySelector": {
        "type": "object",
        "required": ["name", "key"],
        "additionalProperties": False,
        "properties": {"name": _STR, "key": _STR},
    }
}

CNPG_POOLER = _resource(
    "postgresql.cnpg.io/v1",
    "Pooler",
    {
        "type": "object",
        "required": ["cluster", "pgbouncer"],
        "additionalProperties": False,
        "properties": {
            "cluster": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {"name": _STR},
            },
            "instances": {"type": "integer", "minimum": 0},
            "type": {"enum": ["rw", "ro"]},
            "pgbouncer": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "poolMode": {"enum": ["session", "transaction"]},
                    "parameters": {"type": "object", "additionalProperties": {"type": "string"}},
                    "pg_hba": {"type": "array", "items": _STR},
                    "paused": {"type": "boolean"},
                },
            },
            "template": {"type": "object"},
            "monitoring": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"enablePodMonitor": {"type": "boolean"}},
            },
        },
    },
)

CNPG_SCHEDULED_BACKUP = _resource(
    "postgresql.cnpg.io/v1",
    "ScheduledBackup",
    {
        "type": "object",
        "required": ["schedule", "cluster"],
        "additionalProperties": False,
        "properties": {
            # Six fields: CloudNativePG's cron starts with seconds.
            "schedule": {"type": "string", "pattern": r"^\S+( \S+){5}$"},
            "cluster": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {"name": _STR},
            },
            "method": {"enum": ["barmanObjectStore", "volumeSnapshot", "plugin"]},
            "immediate": {"type": "boolean"},
            "suspend": {"type": "boolean"},
            "backupOwnerReference": {"enum": ["none", "self", "cluster"]},
            "target": {"enum": ["primary", "prefer-standby"]},
            "online": {"type": "boolean"},
        },
    },
)

CERTIFICATE = _resource(
    "cert-manager.io/v1",
    "Certificate",
    {
        "type": "object",
        "required": ["secretName", "issuerRef", "dnsNames"],
        "additionalProperties": False,
        "properties": {
            "secretName": _STR,
            "issuerRef": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {"name": _STR, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": _STR},
            },
            "privateKey": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                    "size": _INT,
                    "rotationPolicy": {"enum": ["Never", "Always"]},
                },
            },
            "usages": {"type": "array", "items": _STR},
            "dnsNames": {"type": "array", "minItems": 1, "items": _STR},
        },
    },
)

SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    {
        "type": "object",
        "required": ["selector", "endpoints"],
        "additionalProperties": False,
        "properties": {
            "selector": _SELECTOR,
            "namespaceSelector": {
                "type": "object",
                "properties": {"matchNames": {"type": "array", "items": _STR}},
                "additionalProperties": False,
            },
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["port"],
                    "additionalProperties": False,
                    "properties": {
                        "port": _STR,
                        "path": _STR,
                        "scheme": {"enum": ["http", "https"]},
                        "interval": _DURATION,
                        "scrapeTimeout": _DURATION,
                    },
                },
            },
        },
    },
)

PEER_AUTHENTICATION = _resource(
    "security.istio.io/v1",
    "PeerAuthentication",
    {
        "type": "object",
        "required": ["mtls"],
        "additionalProperties": False,
        "properties": {
            "selector": _SELECTOR,
            "mtls": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"mode": {"enum": ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]}},
            },
            "portLevelMtls": {
                "type": "object",
                "propertyNames": {"pattern": r"^[0-9]+$"},
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"mode": {"enum": ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]}},
                },
            },
        },
    },
)

DESTINATION_RULE = _resource(
    "networking.istio.io/v1",
    "DestinationRule",
    {
        "type": "object",
        "required": ["host"],
        "additionalProperties": False,
        "properties": {
            "host": _STR,
            "trafficPolicy": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "tls": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"mode": {"enum": ["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]}},
                    },
                    "loadBalancer": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "simple": {"enum": ["UNSPECIFIED", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"]}
                        },
                    },
                    "connectionPool": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "http": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"maxRequestsPerConnection": _INT, "idleTimeout": _DURATION},
                            }
                        },
                    },
                    "outlierDetection": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "consecutive5xxErrors": _INT,
                            "consecutiveGatewayErrors": _INT,
                            "interval": _DURATION,
                            "baseEjectionTime": _DURATION,
                            "maxEjectionPercent": {"type": "integer", "minimum": 0, "maximum": 100},
                        },
                    },
                },
            },
        },
    },
)

_VIRTUAL_SERVICE_ROUTE: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["destination"],
        "additionalProperties": False,
        "properties": {
            "destination": {
                "type": "object",
                "required": ["host"],
                "additionalProperties": False,
                "properties": {
                    "host": _STR,
                    "port": {"type": "object", "additionalProperties": False, "properties": {"number": _INT}},
                },
            }
        },
    },
}
"""An Istio VirtualService route (tls and http alike): destinations by host and port number."""

VIRTUAL_SERVICE = _resource(
    "networking.istio.io/v1",
    "VirtualService",
    {
        "type": "object",
        "required": ["hosts"],
        "anyOf": [{"required": ["http"]}, {"required": ["tls"]}],
        "additionalProperties": False,
        "properties": {
            "hosts": {"type": "array", "minItems": 1, "items": _STR},
            "gateways": {"type": "array", "items": _STR},
            "tls": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["match", "route"],
                    "additionalProperties": False,
                    "properties": {
                        "match": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["sniHosts"],
                                "additionalProperties": False,
                                "properties": {
                                    "port": _INT,
                                    "sniHosts": {"type": "array", "minItems": 1, "items": _STR},
                                },
                            },
                        },
                        "route": _VIRTUAL_SERVICE_ROUTE,
                    },
                },
            },
            "http": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["route"],
                    "additionalProperties": False,
                    "properties": {
                        "name": _STR,
                        "match": {
                            "type": "array",
                            "items": {"type": "object", "additionalProperties": False, "properties": {"port": _INT}},
                        },
                        "route": _VIRTUAL_SERVICE_ROUTE,
                        "retries": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "attempts": {"type": "integer", "minimum": 0},
                                "perTryTimeout": _DURATION,
                                "retryOn": {"type": "string", "pattern": r"^[a-z0-9-]+(,[a-z0-9-]+)*$"},
                            },
                        },
                    },
                },
            },
        },
    },
)

ISTIO_GATEWAY = _resource(
    "networking.istio.io/v1",
    "Gateway",
    {
        "type": "object",
        "required": ["selector", "servers"],
        "additionalProperties": False,
        "properties": {
            "selector": _LABELS,
            "servers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["port", "hosts"],
                    "additionalProperties": False,
                    "properties": {
                        "port": {
                            "type": "object",
                            "required": ["number", "name", "protocol"],
                            "additionalProperties": False,
                            "properties": {
                                "number": _INT,
                                "name": _STR,
                                "protocol": {"enum": ["HTTP", "HTTPS", "GRPC", "HTTP2", "MONGO", "TCP", "TLS"]},
                            },
                        },
                        "tls": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "mode": {
                                    "enum": [
                                        "PASSTHROUGH",
                                        "SIMPLE",
                                        "MUTUAL",
                                        "AUTO_PASSTHROUGH",
                                        "ISTIO_MUTUAL",
                                        "OPTIONAL_MUTUAL",
                                    ]
                                }
                            },
                        },
                        "hosts": {"type": "array", "minItems": 1, "items": _STR},
                    },
                },
            },
        },
    },
)

_PARENT_REFS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": _STR,
            "namespace": _STR,
            "sectionName": _STR,
            "port": _INT,
            "group": {"type": "string"},
            "kind": _STR,
        },
    },
}
_HOSTNAMES = {
    "type": "array",
    "minItems": 1,
    "items": {"type": "string", "pattern": r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
}
_BACKEND_REFS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["name", "port"],
        "additionalProperties": False,
        "properties": {"name": _STR, "port": {"type": "integer", "minimum": 1, "maximum": 65535}, "weight": _INT},
    },
}


def _route(api_version: str, kind: str) -> dict[str, Any]:
    return _resource(
        api_version,
        kind,
        {
            "type": "object",
            "required": ["parentRefs", "rules"],
            "additionalProperties": False,
            "properties": {
                "parentRefs": _PARENT_REFS,
                "hostnames": _HOSTNAMES,
                "rules": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["backendRefs"],
                        "additionalProperties": False,
                        "properties": {"backendRefs": _BACKEND_REFS},
                    },
                },
            },
        },
    )


GATEWAY = _resource(
    "gateway.networking.k8s.io/v1",
    "Gateway",
    {
        "type": "object",
        "required": ["gatewayClassName", "listeners"],
        "additionalProperties": False,
        "properties": {
            "gatewayClassName": _STR,
            "listeners": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "port", "protocol"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                        "hostname": _HOSTNAMES["items"],
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "protocol": {"enum": ["HTTP", "HTTPS", "TLS", "TCP", "UDP"]},
                        "tls": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "mode": {"enum": ["Terminate", "Passthrough"]},
                                "certificateRefs": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["name"],
                                        "additionalProperties": False,
                                        "properties": {"name": _STR, "kind": _STR, "group": {"type": "string"}},
                                    },
                                },
                            },
                        },
                        "allowedRoutes": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "namespaces": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {"from": {"enum": ["All", "Same", "Selector"]}},
                                }
                            },
                        },
                    },
                    # Gateway API: TLS passthrough needs protocol TLS, termination HTTPS (or TLS).
                    "allOf": [
                        {
                            "if": {
                                "properties": {
                                    "tls": {"properties": {"mode": {"const": "Passthrough"}}, "required": ["mode"]}
                                },
                                "required": ["tls"],
                            },
                            "then": {"properties": {"protocol": {"const": "TLS"}}},
                        },
                        {
                            "if": {"properties": {"protocol": {"const": "HTTPS"}}},
                            "then": {"required": ["tls"], "properties": {"tls": {"required": ["certificateRefs"]}}},
                        },
                    ],
                },
            },
        },
    },
)

_RULE = {
    "type": "object",
    "required": ["alert", "expr"],
    "additionalProperties": False,
    "properties": {
        "alert": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
        "expr": _STR,
        "for": _DURATION,
        "labels": _LABELS,
        "annotations": _LABELS,
    },
}

PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    {
        "type": "object",
        "required": ["groups"],
        "additionalProperties": False,
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "rules"],
                    "additionalProperties": False,
                    "properties": {"name": _STR, "interval": _DURATION, "rules": {"type": "array", "items": _RULE}},
                },
            }
        },
    },
)

CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("postgresql.cnpg.io/v1", "Cluster"): CNPG_CLUSTER,
    ("postgresql.cnpg.io/v1", "Pooler"): CNPG_POOLER,
    ("postgresql.cnpg.io/v1", "ScheduledBackup"): CNPG_SCHEDULED_BACKUP,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("gateway.networking.k8s.io/v1", "Gateway"): GATEWAY,
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): _route("gateway.networking.k8s.io/v1", "GRPCRoute"),
    ("gateway.networking.k8s.io/v1alpha2", "TLSRoute"): _route("gateway.networking.k8s.io/v1alpha2", "TLSRoute"),
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("security.istio.io/v1", "PeerAuthentication"): PEER_AUTHENTICATION,
    ("networking.istio.io/v1", "DestinationRule"): DESTINATION_RULE,
    ("networking.istio.io/v1", "VirtualService"): VIRTUAL_SERVICE,
    ("networking.istio.io/v1", "Gateway"): ISTIO_GATEWAY,
}
