"""Small structural schemas for the CRD kinds the chart renders.

kubernetes-validate only knows built-in kinds. These schemas cover the fields
the chart writes for CloudNativePG, cert-manager, Prometheus Operator and Istio
resources: required fields, value types and enums, and - where the chart
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

VIRTUAL_SERVICE = _resource(
    "networking.istio.io/v1",
    "VirtualService",
    {
        "type": "object",
        "required": ["hosts", "http"],
        "additionalProperties": False,
        "properties": {
            "hosts": {"type": "array", "minItems": 1, "items": _STR},
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
                        "route": {
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
                                            "port": {
                                                "type": "object",
                                                "additionalProperties": False,
                                                "properties": {"number": _INT},
                                            },
                                        },
                                    }
                                },
                            },
                        },
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

CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("postgresql.cnpg.io/v1", "Cluster"): CNPG_CLUSTER,
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("security.istio.io/v1", "PeerAuthentication"): PEER_AUTHENTICATION,
    ("networking.istio.io/v1", "DestinationRule"): DESTINATION_RULE,
    ("networking.istio.io/v1", "VirtualService"): VIRTUAL_SERVICE,
}
