{{/*
Render-time checks: a production install that lacks something it needs fails
here, naming the value to set, instead of rendering pods that refuse to start
(or, worse, start insecurely). development: true (local clusters only) lifts
the security checks; the checks on topology (one embedded database, pinned
images, the connection budget, one rate limit across replicas) always apply. Rendered from checks.yaml.
*/}}
{{- define "aeterna.checks" -}}
{{- $prod := include "aeterna.production" . -}}
{{- $auth := .Values.sync.auth -}}
{{- $dev := "or set development: true (local clusters only)" -}}
{{- if and $prod (eq $auth.method "none") -}}
{{- fail (printf "sync.auth.method is none: every caller could name itself. Set sync.auth.method to serviceAccount, apiKey, oauth2 or mtls, %s" $dev) -}}
{{- end -}}
{{- if include "aeterna.centralEnabled" . -}}
{{- include "aeterna.checks.central" . -}}
{{- end -}}
{{- if include "aeterna.edgeEnabled" . -}}
{{- include "aeterna.checks.edge" . -}}
{{- end -}}
{{- end -}}

{{- define "aeterna.checks.central" -}}
{{- $prod := include "aeterna.production" . -}}
{{- $w := .Values.workloads.central -}}
{{- $auth := .Values.sync.auth -}}
{{- $dev := "or set development: true (local clusters only)" -}}
{{- /* One embedded PostgreSQL lives in one pod: more replicas would each have their own database. */ -}}
{{- if eq (include "aeterna.databaseMode" .) "embedded" -}}
{{- if or (gt ($w.replicas | int) 1) $w.autoscaling.enabled -}}
{{- fail "central has no database configured, so it runs an embedded PostgreSQL in its pod, which only one replica may own: set workloads.central.replicas: 1 and workloads.central.autoscaling.enabled: false, or configure a database (postgresql.cloudnativepg.enabled, postgresql.url or workloads.central.secrets.database.existingSecret)" -}}
{{- end -}}
{{- end -}}
{{- include "aeterna.checks.rateLimit" . -}}
{{- if $prod -}}
{{- if and (eq $auth.method "apiKey") (not $w.secrets.apiKeys.existingSecret) (not $auth.apiKeysFile) -}}
{{- fail (printf "sync.auth.method apiKey: central needs the API-key hashes: set workloads.central.secrets.apiKeys.existingSecret, %s" $dev) -}}
{{- end -}}
{{- $jwt := $auth.jwt | default (dict) -}}
{{- $remoteKeys := or $jwt.jwksUrl $jwt.oidcDiscovery $jwt.discoveryUrl -}}
{{- $tokenReview := and (eq $auth.method "serviceAccount") (eq (($auth.serviceAccount).verification | default "jwks") "tokenReview") -}}
{{- if and (has $auth.method (list "oauth2" "serviceAccount")) (not $tokenReview) (not $remoteKeys) (not $w.secrets.jwks.existingSecret) (not $jwt.jwksFile) -}}
{{- fail (printf "sync.auth.method %s: central needs the keys it verifies tokens with: set sync.auth.jwt.jwksUrl, or sync.auth.jwt.oidcDiscovery with sync.auth.jwt.issuer, or workloads.central.secrets.jwks.existingSecret (for serviceAccount, the cluster issuer's JWKS: kubectl get --raw /openid/v1/jwks; or sync.auth.serviceAccount.verification: tokenReview), %s" $auth.method $dev) -}}
{{- end -}}
{{- if and (eq $auth.method "mtls") (not (and (include "aeterna.centralTLS" .) .Values.tls.requireClientCert)) -}}
{{- fail "sync.auth.method mtls needs central to verify client certificates: set tls.enabled, tls.requireClientCert and a serving certificate (tls.certManager)" -}}
{{- end -}}
{{- $s := $w.secrets.signingKeys -}}
{{- if not (or $s.existingSecret $s.generate.enabled ((.Values.sync).signing).keysFile) -}}
{{- fail (printf "central needs batch-signing keys: set workloads.central.secrets.signingKeys.existingSecret, or workloads.central.secrets.signingKeys.generate.enabled with generate.agents, %s" $dev) -}}
{{- end -}}
{{- if and (include "aeterna.signingKeysGenerated" .) (eq (include "aeterna.signingKeysAgents" . | fromJsonArray | len) 0) -}}
{{- fail (printf "workloads.central.secrets.signingKeys.generate.agents is empty: list the edge agent ids to generate signing keys for, or set workloads.central.secrets.signingKeys.existingSecret, %s" $dev) -}}
{{- end -}}
{{- end -}}
{{- if .Values.postgresql.cloudnativepg.enabled -}}
{{- include "aeterna.checks.cnpg" . -}}
{{- end -}}
{{- if .Values.gateway.enabled -}}
{{- $g := .Values.gateway -}}
{{- if not (has $g.mode (list "passthrough" "terminate")) -}}
{{- fail (printf "gateway.mode: %q is neither passthrough nor terminate" $g.mode) -}}
{{- end -}}
{{- if and (eq $g.mode "passthrough") (not (include "aeterna.centralTLS" .)) -}}
{{- fail "gateway.mode passthrough forwards TLS to central, which must terminate it: set tls.enabled with a certificate (tls.certManager), or gateway.mode: terminate" -}}
{{- end -}}
{{- if and (eq $g.mode "terminate") (include "aeterna.centralTLS" .) -}}
{{- fail "gateway.mode terminate sends plaintext gRPC to central, which serves TLS here: set gateway.mode: passthrough, or tls.enabled: false behind the gateway" -}}
{{- end -}}
{{- if not (or $g.hostnames .Values.tls.certManager.dnsNames) -}}
{{- fail "gateway.hostnames is empty (and so is tls.certManager.dnsNames): list the names edges dial" -}}
{{- end -}}
{{- if and (not $g.parentRefs) (not $g.create.gatewayClassName) -}}
{{- fail "gateway.create.gatewayClassName is required when gateway.parentRefs is empty (the chart then renders its own Gateway)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Several central replicas share an edge's rate limit only through one Redis
(sync.rateLimitRedisUrl): without it every replica keeps its own token buckets
and an edge gets replicas x sync.rateLimit. Applies in development too (topology).
*/}}
{{- define "aeterna.checks.rateLimit" -}}
{{- $r := .Values.workloads.central.rateLimitRedis -}}
{{- $url := (.Values.sync).rateLimitRedisUrl -}}
{{- $rendered := include "aeterna.rateLimitRedis" . -}}
{{- if and $url $r.external.existingSecret -}}
{{- fail "set either sync.rateLimitRedisUrl or workloads.central.rateLimitRedis.external.existingSecret, not both" -}}
{{- end -}}
{{- if and $rendered (or $url $r.external.existingSecret) -}}
{{- fail (printf "workloads.central.rateLimitRedis.enabled is true while %s names another limiter: set workloads.central.rateLimitRedis.enabled: auto (or false) to use it, or unset it" (ternary "sync.rateLimitRedisUrl" "workloads.central.rateLimitRedis.external.existingSecret" (not (empty $url)))) -}}
{{- end -}}
{{- $replicas := include "aeterna.centralMaxReplicas" . | int -}}
{{- if and (gt $replicas 1) (not $rendered) (not $url) (not $r.external.existingSecret) -}}
{{- fail (printf "central can run %d replicas (workloads.central.replicas, or workloads.central.autoscaling.maxReplicas with workloads.central.autoscaling.enabled) but workloads.central.rateLimitRedis.enabled is false and sync.rateLimitRedisUrl is not set: each replica would keep its own token buckets, so an edge would get up to %d x sync.rateLimit. Set workloads.central.rateLimitRedis.enabled: auto, point sync.rateLimitRedisUrl (or workloads.central.rateLimitRedis.external.existingSecret) at a Redis every replica shares, or run one replica" $replicas $replicas) -}}
{{- end -}}
{{- end -}}

{{- define "aeterna.checks.cnpg" -}}
{{- $c := .Values.postgresql.cloudnativepg.cluster -}}
{{- $image := $c.imageName | default "" -}}
{{- /* A tag naming major.minor plus a build (16.10-202511100807-...), or a digest. */ -}}
{{- if not (or (regexMatch "@sha256:[0-9a-f]{64}$" $image) (regexMatch ":[0-9]+\\.[0-9]+-[0-9A-Za-z.-]+$" $image)) -}}
{{- fail (printf "postgresql.cloudnativepg.cluster.imageName %q is not pinned: use a full tag such as ghcr.io/cloudnative-pg/postgresql:16.10-202511100807-system-bookworm, or add @sha256:<digest>" $image) -}}
{{- end -}}
{{- $version := toString (($c.postgresql).version | default 16) -}}
{{- if not (regexMatch (printf ":%s[.]" $version) $image) -}}
{{- fail (printf "postgresql.cloudnativepg.cluster.imageName %q is not PostgreSQL %s (postgresql.cloudnativepg.cluster.postgresql.version)" $image $version) -}}
{{- end -}}
{{- $b := $c.backup | default (dict) -}}
{{- if $b.schedule -}}
{{- if not (include "aeterna.backupMethod" .) -}}
{{- fail "postgresql.cloudnativepg.cluster.backup.schedule is set but no backup target is: set backup.barmanObjectStore or backup.volumeSnapshot" -}}
{{- end -}}
{{- if ne (len (splitList " " (regexReplaceAll " +" (trim $b.schedule) " "))) 6 -}}
{{- fail (printf "postgresql.cloudnativepg.cluster.backup.schedule %q: CloudNativePG's cron has six fields, seconds first (\"0 0 3 * * *\" = 03:00 daily)" $b.schedule) -}}
{{- end -}}
{{- end -}}
{{- $_ := include "aeterna.poolSize" . -}}
{{- end -}}

{{/* The backup method of the ScheduledBackup: backup.method, else whichever target is configured. */}}
{{- define "aeterna.backupMethod" -}}
{{- $b := .Values.postgresql.cloudnativepg.cluster.backup | default (dict) -}}
{{- if $b.method -}}
{{- if not (get $b $b.method) -}}
{{- fail (printf "postgresql.cloudnativepg.cluster.backup.method is %s but backup.%s is not configured" $b.method $b.method) -}}
{{- end -}}
{{- $b.method -}}
{{- else if $b.barmanObjectStore -}}barmanObjectStore
{{- else if $b.volumeSnapshot -}}volumeSnapshot
{{- end -}}
{{- end -}}

{{- define "aeterna.checks.edge" -}}
{{- $auth := .Values.sync.auth -}}
{{- $dev := "or set development: true (local clusters only)" -}}
{{- if include "aeterna.production" . -}}
{{- if and (has $auth.method (list "apiKey" "oauth2")) (not $auth.existingSecret) -}}
{{- fail (printf "sync.auth.method %s: the edge needs its credentials: set sync.auth.existingSecret (a Secret with %s), %s" $auth.method (ternary "apiKey" "clientId, clientSecret, tokenUrl" (eq $auth.method "apiKey")) $dev) -}}
{{- end -}}
{{- if not (include "aeterna.edgeSigningKeySource" .) -}}
{{- fail (printf "the edge needs its batch-signing key (the one central holds for edge.agentId): set workloads.edge.signingKey.existingSecret, or sync.auth.existingSecret with a signingKey entry, %s" $dev) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Where the edge's signing key comes from, as "secret/key": workloads.edge.signingKey,
else the chart-generated keys when central is in the same release, else the
credentials Secret (key signingKey). Empty: none (sync.signing in the values, or nothing).
*/}}
{{- define "aeterna.edgeSigningKeySource" -}}
{{- $own := .Values.workloads.edge.signingKey -}}
{{- if $own.existingSecret -}}
{{- printf "%s/%s" $own.existingSecret $own.key -}}
{{- else if and (include "aeterna.signingKeysGenerated" .) (not .Values.workloads.edge.agentIdFromPodName) -}}
{{- printf "%s/%s.key" (include "aeterna.signingKeysSecret" .) ((.Values.edge).agentId | default "edge-agent-1") -}}
{{- else if .Values.sync.auth.existingSecret -}}
{{- printf "%s/signingKey" .Values.sync.auth.existingSecret -}}
{{- else if or ((.Values.sync).signing).key ((.Values.sync).signing).keyFile -}}
values
{{- end -}}
{{- end -}}
