{{/*
The config.yaml each pod reads. The spec-language blocks of the values are
copied as they are; the chart then sets only what the pod layout decides
(listen addresses, data directories, mounted secret and certificate paths, the
cache sidecars' URLs, the Qdrant server's URL). Secrets never appear here:
they arrive as mounted files or AETERNA_* env overrides.
*/}}

{{- define "aeterna.config.base" -}}
{{- $cfg := dict -}}
{{- range $key := list "deploymentMode" "cache" "sync" "aeterna" "centralServer" "qdrant" "vectorDatabase" "postgresql" "tls" "central" "edge" "telemetry" "opal" -}}
{{- $value := index $.Values $key -}}
{{- if not (kindIs "invalid" $value) -}}
{{- $_ := set $cfg $key (deepCopy $value) -}}
{{- end -}}
{{- end -}}
{{- range $key := list "sync" "tls" "central" "edge" "telemetry" "cache" "vectorDatabase" -}}
{{- if not (hasKey $cfg $key) -}}
{{- $_ := set $cfg $key (dict) -}}
{{- end -}}
{{- end -}}
{{/* Chart-only blocks: the chart acts on them; the process has no use for them. */}}
{{- $_ := unset $cfg "opal" -}}
{{- if hasKey $cfg "postgresql" }}{{ $_ := unset $cfg.postgresql "cloudnativepg" }}{{ end -}}
{{- $_ := unset $cfg.vectorDatabase "qdrant" -}}
{{- $_ := unset $cfg.tls "certManager" -}}
{{- if not (hasKey $cfg.sync "auth") -}}{{- $_ := set $cfg.sync "auth" (dict) -}}{{- end -}}
{{- if not (hasKey $cfg.sync "signing") -}}{{- $_ := set $cfg.sync "signing" (dict) -}}{{- end -}}
{{- if not (hasKey $cfg "postgresql") -}}{{- $_ := set $cfg "postgresql" (dict) -}}{{- end -}}
{{- /* Rendered only when asked for: the model's default is false. */ -}}
{{- if .Values.development -}}{{- $_ := set $cfg "development" true -}}{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{- define "aeterna.config.central" -}}
{{- $cfg := include "aeterna.config.base" . | fromYaml -}}
{{- $w := .Values.workloads.central -}}
{{- $_ := set $cfg.central "listenHost" "0.0.0.0" -}}
{{- $_ := set $cfg.central "dataDir" "/var/lib/aeterna/central" -}}
{{- if include "aeterna.centralTLS" . -}}
{{- $_ := set $cfg.tls "certFile" "/etc/aeterna/tls/tls.crt" -}}
{{- $_ := set $cfg.tls "keyFile" "/etc/aeterna/tls/tls.key" -}}
{{- if $cfg.tls.requireClientCert -}}
{{- $_ := set $cfg.tls "caFile" "/etc/aeterna/tls/ca.crt" -}}
{{- end -}}
{{- $_ := set $cfg.telemetry "healthPort" ($w.healthPort | int) -}}
{{- end -}}
{{- if $w.secrets.apiKeys.existingSecret -}}
{{- $_ := set $cfg.sync.auth "apiKeysFile" (printf "/etc/aeterna/secrets/api-keys/%s" $w.secrets.apiKeys.key) -}}
{{- end -}}
{{- if or $w.secrets.signingKeys.existingSecret (include "aeterna.signingKeysGenerated" .) -}}
{{- $_ := set $cfg.sync.signing "keysFile" (printf "/etc/aeterna/secrets/signing-keys/%s" $w.secrets.signingKeys.key) -}}
{{- end -}}
{{- /* Sized to the connection budget (aeterna.poolSize in _helpers.tpl). */ -}}
{{- $_ := set $cfg.postgresql "poolSize" (include "aeterna.poolSize" . | int) -}}
{{- if and (include "aeterna.snapshotVolume" .) (not $cfg.central.snapshotDir) -}}
{{- $_ := set $cfg.central "snapshotDir" $w.snapshots.mountPath -}}
{{- end -}}
{{- if $w.secrets.jwks.existingSecret -}}
{{- $jwt := $cfg.sync.auth.jwt | default (dict) -}}
{{- $_ := set $jwt "jwksFile" (printf "/etc/aeterna/secrets/jwks/%s" $w.secrets.jwks.key) -}}
{{- $_ := set $cfg.sync.auth "jwt" $jwt -}}
{{- end -}}
{{- if and (include "aeterna.qdrantEnabled" .) (not $cfg.vectorDatabase.qdrantUrl) -}}
{{- $_ := set $cfg.vectorDatabase "qdrantUrl" (printf "http://%s:6333" (include "aeterna.componentName" (list . "qdrant"))) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{- define "aeterna.edgeSecretDir" -}}
{{- .Values.sync.auth.secretDir | default "/etc/aeterna/secrets/sync" -}}
{{- end -}}

{{- define "aeterna.config.edge" -}}
{{- $cfg := include "aeterna.config.base" . | fromYaml -}}
{{- $w := .Values.workloads.edge -}}
{{- $_ := set $cfg.edge "listenHost" "0.0.0.0" -}}
{{- $_ := set $cfg.edge "dataDir" "/var/lib/aeterna/edge" -}}
{{- /* The caches (see values.yaml, sessionStore and dragonfly). */ -}}
{{- if include "aeterna.sessionStoreSidecar" . -}}
{{- if $cfg.cache.url -}}
{{- fail "cache.url is set while sessionStore.mode is sidecar: set sessionStore.mode: external to use your own session store, or unset cache.url" -}}
{{- end -}}
{{- $_ := set $cfg.cache "url" (include "aeterna.sessionStoreURL" .) -}}
{{- $_ := set $cfg.cache "backend" ($cfg.cache.backend | default "redis") -}}
{{- else if and (not $cfg.cache.url) (not .Values.sessionStore.external.existingSecret) -}}
{{- fail "sessionStore.mode external needs the store's URL: cache.url, or sessionStore.external.existingSecret when it carries a password" -}}
{{- else if and $cfg.cache.url .Values.sessionStore.external.existingSecret -}}
{{- fail "set either cache.url or sessionStore.external.existingSecret, not both" -}}
{{- end -}}
{{- if .Values.dragonfly.enabled -}}
{{- if $cfg.cache.workingUrl -}}
{{- fail "cache.workingUrl is set while dragonfly.enabled is true: set dragonfly.enabled: false to use your own working-memory cache, or unset cache.workingUrl" -}}
{{- end -}}
{{- $_ := set $cfg.cache "workingUrl" (include "aeterna.workingCacheURL" .) -}}
{{- end -}}
{{- if .Values.sync.auth.existingSecret -}}
{{- $_ := set $cfg.sync.auth "secretDir" (include "aeterna.edgeSecretDir" .) -}}
{{- end -}}
{{- if $w.centralCA.existingSecret -}}
{{- $_ := set $cfg.tls "caFile" (printf "/etc/aeterna/central-ca/%s" $w.centralCA.key) -}}
{{- end -}}
{{- if include "aeterna.centralTLS" . -}}
{{- $_ := set $cfg.tls "certFile" "/etc/aeterna/tls/tls.crt" -}}
{{- $_ := set $cfg.tls "keyFile" "/etc/aeterna/tls/tls.key" -}}
{{- $_ := set $cfg.telemetry "healthPort" (.Values.workloads.central.healthPort | int) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}
