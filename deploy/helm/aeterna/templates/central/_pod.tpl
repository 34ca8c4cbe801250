{{/* Pieces shared by the central Deployment and the migration Job. */}}

{{/*
Call with (list $ <pooled>): pooled is true for the central pods (request pool
through PgBouncer when the pooler is on) and false for the migration Job,
which always talks to the primary directly (and gets no rate-limiter URL).
*/}}
{{- define "aeterna.central.env" -}}
{{- $root := index . 0 -}}
{{- $centralPod := index . 1 -}}
{{- $pooled := and $centralPod (include "aeterna.poolerEnabled" $root) -}}
{{- with $root -}}
{{- $w := .Values.workloads.central -}}
{{- $app := printf "%s-app" (include "aeterna.cnpgCluster" .) -}}
- name: AETERNA_CONFIG
  value: /etc/aeterna/config.yaml
{{- if and .Values.postgresql.cloudnativepg.enabled $pooled }}
# The request pool goes through PgBouncer (transaction pooling). The URL holds
# no credentials: libpq reads the app user's from PGUSER / PGPASSWORD.
- name: PGUSER
  valueFrom:
    secretKeyRef: {name: {{ $app }}, key: username}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $app }}, key: password}
- name: AETERNA_POSTGRESQL__URL
  value: {{ printf "postgresql://%s.%s.svc:5432/aeterna" (include "aeterna.cnpgPooler" .) .Release.Namespace | quote }}
# LISTEN/NOTIFY (policy updates) and the snapshot advisory lock need one
# session-bound connection each: PgBouncer's transaction pooling would hand
# the session to other clients between transactions (LISTEN silently stops
# receiving, a session lock leaks). So they connect DIRECTLY to the cluster's
# -rw service: CloudNativePG's <cluster>-app URI. Central's readiness probe
# uses a third direct connection of its own (never queued behind requests).
- name: AETERNA_POSTGRESQL__DIRECT_URL
  valueFrom:
    secretKeyRef: {name: {{ $app }}, key: uri}
{{- else if .Values.postgresql.cloudnativepg.enabled }}
# CloudNativePG writes the application user's connection URI (the -rw
# service, direct) into <cluster>-app.
- name: AETERNA_POSTGRESQL__URL
  valueFrom:
    secretKeyRef:
      name: {{ $app }}
      key: uri
{{- else if $w.secrets.database.existingSecret }}
- name: AETERNA_POSTGRESQL__URL
  valueFrom:
    secretKeyRef:
      name: {{ $w.secrets.database.existingSecret }}
      key: {{ $w.secrets.database.key }}
{{- end }}
{{- /* Central's pods only: the migration Job (a pre-upgrade hook, which may run
before the limiter's Secret exists) does not rate-limit anything. */ -}}
{{- if $centralPod }}
{{- if include "aeterna.rateLimitRedis" . }}
# The shared rate limiter (workloads.central.rateLimitRedis): its URL carries
# the generated password, so it comes from the chart's Secret, not config.yaml.
- name: AETERNA_SYNC__RATE_LIMIT_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "aeterna.rateLimitRedisName" . }}
      key: url
{{- else if $w.rateLimitRedis.external.existingSecret }}
- name: AETERNA_SYNC__RATE_LIMIT_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $w.rateLimitRedis.external.existingSecret }}
      key: {{ $w.rateLimitRedis.external.key }}
{{- end }}
{{- end }}
{{- with $w.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Call with (list $ "config-map-name"). */}}
{{- define "aeterna.central.volumes" -}}
{{- $root := index . 0 -}}
{{- $w := $root.Values.workloads.central -}}
- name: config
  configMap:
    name: {{ index . 1 }}
- name: data
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- if include "aeterna.centralTLS" $root }}
- name: tls
  secret:
    secretName: {{ include "aeterna.centralTLSSecret" $root }}
{{- end }}
{{- if $w.secrets.apiKeys.existingSecret }}
- name: api-keys
  secret:
    secretName: {{ $w.secrets.apiKeys.existingSecret }}
    items:
      - key: {{ $w.secrets.apiKeys.key }}
        path: {{ $w.secrets.apiKeys.key }}
{{- end }}
{{- if or $w.secrets.signingKeys.existingSecret (include "aeterna.signingKeysGenerated" $root) }}
- name: signing-keys
  secret:
    secretName: {{ $w.secrets.signingKeys.existingSecret | default (include "aeterna.signingKeysSecret" $root) }}
    items:
      - key: {{ $w.secrets.signingKeys.key }}
        path: {{ $w.secrets.signingKeys.key }}
{{- end }}
{{- if $w.secrets.jwks.existingSecret }}
- name: jwks
  secret:
    secretName: {{ $w.secrets.jwks.existingSecret }}
    items:
      - key: {{ $w.secrets.jwks.key }}
        path: {{ $w.secrets.jwks.key }}
{{- end }}
{{- end -}}

{{- define "aeterna.central.volumeMounts" -}}
{{- $w := .Values.workloads.central -}}
- name: config
  mountPath: /etc/aeterna/config.yaml
  subPath: config.yaml
  readOnly: true
- name: data
  mountPath: /var/lib/aeterna/central
- name: tmp
  mountPath: /tmp
{{- if include "aeterna.centralTLS" . }}
- name: tls
  mountPath: /etc/aeterna/tls
  readOnly: true
{{- end }}
{{- if $w.secrets.apiKeys.existingSecret }}
- name: api-keys
  mountPath: /etc/aeterna/secrets/api-keys
  readOnly: true
{{- end }}
{{- if or $w.secrets.signingKeys.existingSecret (include "aeterna.signingKeysGenerated" .) }}
- name: signing-keys
  mountPath: /etc/aeterna/secrets/signing-keys
  readOnly: true
{{- end }}
{{- if $w.secrets.jwks.existingSecret }}
- name: jwks
  mountPath: /etc/aeterna/secrets/jwks
  readOnly: true
{{- end }}
{{- end -}}
