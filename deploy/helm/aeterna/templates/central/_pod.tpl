{{/* Pieces shared by the central Deployment and the migration Job. */}}

{{- define "aeterna.central.env" -}}
{{- $w := .Values.workloads.central -}}
- name: AETERNA_CONFIG
  value: /etc/aeterna/config.yaml
{{- if .Values.postgresql.cloudnativepg.enabled }}
# CloudNativePG writes the application user's connection URI into <cluster>-app.
- name: AETERNA_POSTGRESQL__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "aeterna.cnpgCluster" . }}-app
      key: uri
{{- else if $w.secrets.database.existingSecret }}
- name: AETERNA_POSTGRESQL__URL
  valueFrom:
    secretKeyRef:
      name: {{ $w.secrets.database.existingSecret }}
      key: {{ $w.secrets.database.key }}
{{- end }}
{{- with $w.extraEnv }}
{{ toYaml . }}
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
{{- if $w.secrets.signingKeys.existingSecret }}
- name: signing-keys
  secret:
    secretName: {{ $w.secrets.signingKeys.existingSecret }}
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
{{- if $w.secrets.signingKeys.existingSecret }}
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
