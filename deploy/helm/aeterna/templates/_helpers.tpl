{{/* Names and labels. */}}

{{- define "aeterna.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aeterna.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<suffix>", at most 63 characters. Call with (list $ "suffix"). */}}
{{- define "aeterna.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "aeterna.fullname" $root | trunc (int (sub 62 (len (index . 1))))) (index . 1) | trimSuffix "-" -}}
{{- end -}}

{{- define "aeterna.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aeterna
{{- end -}}

{{/* Selector labels of a component. Call with (list $ "central"). */}}
{{- define "aeterna.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "aeterna.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "aeterna.componentLabels" -}}
{{ include "aeterna.labels" (index . 0) }}
{{ include "aeterna.selectorLabels" . }}
{{- end -}}

{{- define "aeterna.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Which components this release renders. */}}
{{- define "aeterna.centralEnabled" -}}
{{- $explicit := .Values.workloads.central.enabled -}}
{{- if kindIs "bool" $explicit -}}
{{- ternary "true" "" $explicit -}}
{{- else -}}
{{- ternary "true" "" (eq .Values.deploymentMode "central") -}}
{{- end -}}
{{- end -}}

{{- define "aeterna.edgeEnabled" -}}
{{- $explicit := .Values.workloads.edge.enabled -}}
{{- if kindIs "bool" $explicit -}}
{{- ternary "true" "" $explicit -}}
{{- else -}}
{{- ternary "true" "" (has .Values.deploymentMode (list "edge" "hybrid")) -}}
{{- end -}}
{{- end -}}

{{/* Ports, with the config model's defaults. */}}
{{- define "aeterna.syncPort" -}}
{{- .Values.sync.listenPort | default 8081 | int -}}
{{- end -}}
{{- define "aeterna.edgePort" -}}
{{- (.Values.edge).listenPort | default 50051 | int -}}
{{- end -}}
{{- define "aeterna.metricsPort" -}}
{{- (.Values.telemetry).metricsPort | default 8080 | int -}}
{{- end -}}

{{- define "aeterna.centralTLS" -}}
{{- if and .Values.tls.enabled (or .Values.tls.certManager.enabled .Values.tls.certManager.existingSecret) -}}true{{- end -}}
{{- end -}}

{{- define "aeterna.centralTLSSecret" -}}
{{- if .Values.tls.certManager.enabled -}}
{{- .Values.tls.certManager.secretName | default (include "aeterna.componentName" (list . "central-tls")) -}}
{{- else -}}
{{- .Values.tls.certManager.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "aeterna.cnpgCluster" -}}
{{- include "aeterna.componentName" (list . "pg") -}}
{{- end -}}

{{- define "aeterna.qdrantEnabled" -}}
{{- if and (include "aeterna.centralEnabled" .) (.Values.vectorDatabase.qdrant).enabled -}}true{{- end -}}
{{- end -}}

{{- define "aeterna.centralServiceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "aeterna.componentName" (list . "central")) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "aeterna.edgeServiceAccount" -}}
{{- ((.Values.sync.auth).serviceAccount).name | default "aeterna-edge-sync" -}}
{{- end -}}

{{/*
Turn a size such as 1Gi, 512Mi, 1G or 1048576 into bytes (the caches' --maxmemory).
Call with (list <value> "<values key, for the error>"). Reads what the config
model reads (aeterna_shared/config/units.py); anything else fails loudly.
*/}}
{{- define "aeterna.bytes" -}}
{{- $value := index . 0 -}}
{{- $raw := "" -}}
{{- if or (kindIs "float64" $value) (kindIs "float32" $value) -}}
{{- $raw = printf "%.0f" $value -}}
{{- else -}}
{{- $raw = toString $value | trim -}}
{{- end -}}
{{- $number := regexFind "^[0-9]+([.][0-9]+)?" $raw -}}
{{- $unit := trimPrefix $number $raw | trim -}}
{{- $units := dict "" 1 "B" 1 "K" 1000 "KB" 1000 "M" 1000000 "MB" 1000000 "G" 1000000000 "GB" 1000000000 "T" 1000000000000 "TB" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- if or (not $number) (not (hasKey $units $unit)) -}}
{{- fail (printf "%s: %q is not a size such as 1Gi, 512Mi or 1048576" (index . 1) $raw) -}}
{{- end -}}
{{- if contains "." $number -}}
{{- /* As the config model reads it: the whole bytes of number x unit. */ -}}
{{- printf "%.0f" (floor (mulf (float64 $number) (index $units $unit))) -}}
{{- else -}}
{{- mul (int64 $number) (index $units $unit) -}}
{{- end -}}
{{- end -}}

{{/* The edge's caches: which sidecars run, and where they listen. */}}
{{- define "aeterna.sessionStoreSidecar" -}}
{{- $mode := .Values.sessionStore.mode -}}
{{- if not (has $mode (list "sidecar" "external")) -}}
{{- fail (printf "sessionStore.mode: %q is neither sidecar nor external" $mode) -}}
{{- end -}}
{{- if eq $mode "sidecar" -}}true{{- end -}}
{{- end -}}

{{- define "aeterna.sessionStoreURL" -}}
{{- printf "redis://127.0.0.1:%d/0" (.Values.sessionStore.port | int) -}}
{{- end -}}

{{- define "aeterna.workingCacheURL" -}}
{{- printf "redis://127.0.0.1:%d/0" (.Values.dragonfly.port | int) -}}
{{- end -}}

{{/* Pod annotations the mesh needs. */}}
{{- define "aeterna.meshPodAnnotations" -}}
{{- if .Values.mesh.linkerd.enabled }}
linkerd.io/inject: enabled
{{- end }}
{{- end -}}

{{- define "aeterna.meshPodLabels" -}}
{{- if .Values.mesh.istio.enabled }}
sidecar.istio.io/inject: "true"
{{- end }}
{{- end -}}

{{/*
Where central's database is: "cnpg" (the CloudNativePG cluster below),
"external" (postgresql.url or workloads.central.secrets.database), or
"embedded" (none: central starts PostgreSQL inside its own pod).
*/}}
{{- define "aeterna.databaseMode" -}}
{{- if .Values.postgresql.cloudnativepg.enabled -}}cnpg
{{- else if or .Values.postgresql.url .Values.workloads.central.secrets.database.existingSecret -}}external
{{- else -}}embedded
{{- end -}}
{{- end -}}

{{- define "aeterna.poolerEnabled" -}}
{{- if and .Values.postgresql.cloudnativepg.enabled .Values.postgresql.cloudnativepg.pooler.enabled -}}true{{- end -}}
{{- end -}}

{{- define "aeterna.cnpgPooler" -}}
{{- include "aeterna.componentName" (list . "pg-pooler") -}}
{{- end -}}

{{/* The most central pods that can run at once (what connection budgets are sized for). */}}
{{- define "aeterna.centralMaxReplicas" -}}
{{- $w := .Values.workloads.central -}}
{{- if $w.autoscaling.enabled -}}{{ $w.autoscaling.maxReplicas | int }}{{- else -}}{{ $w.replicas | int }}{{- end -}}
{{- end -}}

{{/*
postgresql.poolSize as rendered into central's config, checked against the
connection budget of the CloudNativePG cluster (see values.yaml,
postgresql.cloudnativepg.connectionBudget, and docs/deploy.md). Each central
replica holds poolSize request connections plus 3 session-bound/direct ones:
the policy LISTEN connection, the snapshot advisory-lock connection and the
readiness probe's connection (its own, so readiness never queues behind requests).
Unset poolSize: 10 (the model's default), lowered to what fits without a pooler.
*/}}
{{- define "aeterna.poolSize" -}}
{{- $explicit := .Values.postgresql.poolSize -}}
{{- $replicas := include "aeterna.centralMaxReplicas" . | int -}}
{{- if ne (include "aeterna.databaseMode" .) "cnpg" -}}
{{- $explicit | default 10 | int -}}
{{- else -}}
{{- $cnpg := .Values.postgresql.cloudnativepg -}}
{{- $params := (($cnpg.cluster).postgresql).parameters | default (dict) -}}
{{- $max := get $params "max_connections" | default 100 | int -}}
{{- $reserved := add (get $params "superuser_reserved_connections" | default 3 | int) ($cnpg.connectionBudget.reserved | int) -}}
{{- $available := sub $max $reserved | int -}}
{{- $budget := printf "postgresql.cloudnativepg.cluster.postgresql.parameters.max_connections (%d, minus %d reserved)" $max $reserved -}}
{{- if include "aeterna.poolerEnabled" . -}}
{{- $p := $cnpg.pooler -}}
{{- $server := add (mul ($p.instances | int) ($p.defaultPoolSize | int)) (mul $replicas 3) | int -}}
{{- if gt $server $available -}}
{{- fail (printf "connection budget: pooler.instances x pooler.defaultPoolSize + %d central replicas x 3 direct (LISTEN + snapshot lock + readiness) = %d connections exceed %s; raise max_connections or lower postgresql.cloudnativepg.pooler.defaultPoolSize" $replicas $server $budget) -}}
{{- end -}}
{{- $size := $explicit | default 10 | int -}}
{{- if gt (mul $replicas $size) ($p.maxClientConn | int) -}}
{{- fail (printf "connection budget: %d central replicas x postgresql.poolSize %d exceed postgresql.cloudnativepg.pooler.maxClientConn (%d); lower postgresql.poolSize or raise maxClientConn" $replicas $size ($p.maxClientConn | int)) -}}
{{- end -}}
{{- $size -}}
{{- else -}}
{{- $fit := sub (div $available $replicas) 3 | int -}}
{{- $size := $explicit | default (min 10 $fit) | int -}}
{{- if lt $size 1 -}}{{- $size = 1 -}}{{- end -}}
{{- $total := mul $replicas (add $size 3) | int -}}
{{- if gt $total $available -}}
{{- fail (printf "connection budget: %d central replicas x (postgresql.poolSize %d + 1 LISTEN + 1 snapshot lock + 1 readiness) = %d connections exceed %s; lower postgresql.poolSize or workloads.central.autoscaling.maxReplicas, raise max_connections, or enable postgresql.cloudnativepg.pooler" $replicas $size $total $budget) -}}
{{- end -}}
{{- $size -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Whether the production checks apply (everything but development: true). */}}
{{- define "aeterna.production" -}}
{{- if not .Values.development -}}true{{- end -}}
{{- end -}}

{{- define "aeterna.signingKeysSecret" -}}
{{- include "aeterna.componentName" (list . "signing-keys") -}}
{{- end -}}

{{/* Generated signing keys are in use (central enabled, no existingSecret, generate on). */}}
{{- define "aeterna.signingKeysGenerated" -}}
{{- $s := .Values.workloads.central.secrets.signingKeys -}}
{{- if and (include "aeterna.centralEnabled" .) (not $s.existingSecret) $s.generate.enabled -}}true{{- end -}}
{{- end -}}

{{/* The agent ids the chart generates signing keys for. */}}
{{- define "aeterna.signingKeysAgents" -}}
{{- $agents := .Values.workloads.central.secrets.signingKeys.generate.agents | default (list) -}}
{{- if and (include "aeterna.edgeEnabled" .) (not .Values.workloads.edge.agentIdFromPodName) -}}
{{- $agents = append $agents ((.Values.edge).agentId | default "edge-agent-1") -}}
{{- end -}}
{{- toJson (uniq $agents) -}}
{{- end -}}

{{/* The PeerAuthentication mode of central's gRPC port (mesh.istio.grpcPortMtls). */}}
{{- define "aeterna.grpcPortMtls" -}}
{{- $mode := .Values.mesh.istio.grpcPortMtls -}}
{{- if eq $mode "auto" -}}
{{- if or .Values.gateway.enabled (has .Values.workloads.central.service.type (list "LoadBalancer" "NodePort")) -}}PERMISSIVE{{- else -}}STRICT{{- end -}}
{{- else if has $mode (list "STRICT" "PERMISSIVE") -}}
{{- $mode -}}
{{- else -}}
{{- fail (printf "mesh.istio.grpcPortMtls: %q is none of auto, STRICT, PERMISSIVE" $mode) -}}
{{- end -}}
{{- end -}}

{{/* Central's snapshots have a volume of their own (a claim or a volume source). */}}
{{- define "aeterna.snapshotVolume" -}}
{{- $s := .Values.workloads.central.snapshots -}}
{{- if or $s.persistence.enabled $s.volume -}}true{{- end -}}
{{- end -}}

{{- define "aeterna.snapshotClaim" -}}
{{- .Values.workloads.central.snapshots.persistence.existingClaim | default (include "aeterna.componentName" (list . "central-snapshots")) -}}
{{- end -}}

{{/*
Central's shared rate limiter (workloads.central.rateLimitRedis): "true" when
the chart renders it. auto renders it when central can run more than one
replica and no shared limiter is configured (sync.rateLimitRedisUrl, or
rateLimitRedis.external.existingSecret).
*/}}
{{- define "aeterna.rateLimitRedis" -}}
{{- $r := .Values.workloads.central.rateLimitRedis -}}
{{- $configured := or (.Values.sync).rateLimitRedisUrl $r.external.existingSecret -}}
{{- if include "aeterna.centralEnabled" . -}}
{{- if kindIs "bool" $r.enabled -}}
{{- if $r.enabled -}}true{{- end -}}
{{- else if eq (toString $r.enabled) "auto" -}}
{{- if and (gt (include "aeterna.centralMaxReplicas" . | int) 1) (not $configured) -}}true{{- end -}}
{{- else -}}
{{- fail (printf "workloads.central.rateLimitRedis.enabled: %v is none of auto, true, false" $r.enabled) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "aeterna.rateLimitRedisName" -}}
{{- include "aeterna.componentName" (list . "ratelimit-redis") -}}
{{- end -}}
