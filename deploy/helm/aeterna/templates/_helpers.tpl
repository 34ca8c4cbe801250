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
