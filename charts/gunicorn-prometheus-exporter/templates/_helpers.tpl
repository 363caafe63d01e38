{{/* Names */}}
{{- define "gpe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gpe.fullname" -}}
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

{{- define "gpe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object names, truncated so that suffixes stay within 63 characters */}}
{{- define "gpe.appName" -}}{{ include "gpe.fullname" . | trunc 55 | trimSuffix "-" }}{{- end -}}
{{- define "gpe.exporterName" -}}{{ printf "%s-exporter" (include "gpe.fullname" . | trunc 54 | trimSuffix "-") }}{{- end -}}
{{- define "gpe.metricsName" -}}{{ printf "%s-metrics" (include "gpe.fullname" . | trunc 55 | trimSuffix "-") }}{{- end -}}
{{- define "gpe.redisName" -}}{{ printf "%s-redis" (include "gpe.fullname" . | trunc 57 | trimSuffix "-") }}{{- end -}}

{{- define "gpe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gpe.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels. Call with (dict "ctx" $ "component" "app") */}}
{{- define "gpe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpe.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "gpe.labels" -}}
helm.sh/chart: {{ include "gpe.chart" .ctx }}
{{ include "gpe.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: gunicorn-prometheus-exporter
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* Image reference. Call with (dict "ctx" $ "image" .Values.app.image) */}}
{{- define "gpe.image" -}}
{{- $repo := .image.repository -}}
{{- if .image.registry -}}{{- $repo = printf "%s/%s" .image.registry .image.repository -}}{{- end -}}
{{- $tag := .image.tag | default .ctx.Chart.AppVersion | toString -}}
{{- if .image.digest -}}
{{- printf "%s:%s@%s" $repo $tag .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* Effective switches */}}
{{- define "gpe.redisEnabled" -}}
{{- if eq .Values.topology "daemonset" -}}
{{- if eq (toString .Values.redis.enabled) "false" -}}
{{- fail "topology=daemonset needs Redis (the per-node exporters read it): set redis.enabled=true or leave it unset" -}}
{{- end -}}
true
{{- else if .Values.redis.enabled -}}
true
{{- end -}}
{{- end -}}

{{- define "gpe.bundledRedis" -}}
{{- if and (include "gpe.redisEnabled" .) .Values.redis.bundled.enabled -}}true{{- end -}}
{{- end -}}

{{- define "gpe.networkPolicyEnabled" -}}
{{- if kindIs "invalid" .Values.networkPolicy.enabled -}}
{{- if eq .Values.topology "daemonset" -}}true{{- end -}}
{{- else if .Values.networkPolicy.enabled -}}
true
{{- end -}}
{{- end -}}

{{- define "gpe.monitoringApi" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}true{{- end -}}
{{- end -}}

{{- define "gpe.checkMonitors" -}}
{{- if and .Values.serviceMonitor.enabled .Values.podMonitor.enabled -}}
{{- fail "serviceMonitor.enabled and podMonitor.enabled are both true: both would scrape the same metrics endpoint and every series would be stored twice. Enable only one." -}}
{{- end -}}
{{- end -}}

{{- define "gpe.renderServiceMonitor" -}}
{{- include "gpe.checkMonitors" . -}}
{{- if and .Values.serviceMonitor.enabled .Values.metricsService.enabled (or .Values.serviceMonitor.force (include "gpe.monitoringApi" .)) -}}true{{- end -}}
{{- end -}}

{{- define "gpe.renderPodMonitor" -}}
{{- include "gpe.checkMonitors" . -}}
{{- if and .Values.podMonitor.enabled (or .Values.podMonitor.force (include "gpe.monitoringApi" .)) -}}true{{- end -}}
{{- end -}}

{{/* Component whose pods serve /metrics */}}
{{- define "gpe.metricsComponent" -}}
{{- if eq .Values.topology "daemonset" -}}exporter{{- else -}}app{{- end -}}
{{- end -}}

{{/* PromQL matchers of this release's series */}}
{{- define "gpe.ruleSelector" -}}
{{- if .Values.prometheusRule.selector -}}
{{- .Values.prometheusRule.selector -}}
{{- else if .Values.podMonitor.enabled -}}
{{- printf "job=%q" (printf "%s/%s" (default .Release.Namespace .Values.podMonitor.namespace) (include "gpe.fullname" .)) -}}
{{- else -}}
{{- printf "job=%q" (include "gpe.metricsName" .) -}}
{{- end -}}
{{- end -}}

{{/* Redis connection */}}
{{- define "gpe.redisHost" -}}
{{- if .Values.redis.bundled.enabled -}}{{ include "gpe.redisName" . }}{{- else -}}{{ .Values.redis.external.host }}{{- end -}}
{{- end -}}

{{- define "gpe.redisPort" -}}
{{- if .Values.redis.bundled.enabled -}}
{{- .Values.redis.bundled.port -}}
{{- else if .Values.redis.external.url -}}
{{- $u := urlParse .Values.redis.external.url -}}
{{- $parts := splitList ":" $u.host -}}
{{- if gt (len $parts) 1 -}}{{ last $parts }}{{- else -}}6379{{- end -}}
{{- else -}}
{{- .Values.redis.external.port -}}
{{- end -}}
{{- end -}}

{{- define "gpe.redisSecretName" -}}
{{- if .Values.redis.bundled.enabled -}}
{{- default (include "gpe.redisName" .) .Values.redis.bundled.auth.existingSecret -}}
{{- else -}}
{{- .Values.redis.external.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "gpe.redisSecretKey" -}}
{{- if .Values.redis.bundled.enabled -}}
{{- if .Values.redis.bundled.auth.existingSecret -}}{{ .Values.redis.bundled.auth.existingSecretPasswordKey }}{{- else -}}redis-password{{- end -}}
{{- else -}}
{{- .Values.redis.external.existingSecretPasswordKey -}}
{{- end -}}
{{- end -}}

{{- define "gpe.redisTLS" -}}
{{- if and (not .Values.redis.bundled.enabled) .Values.redis.external.tls.enabled -}}true{{- end -}}
{{- end -}}

{{- define "gpe.validateRedis" -}}
{{- if and (include "gpe.redisEnabled" .) (not .Values.redis.bundled.enabled) -}}
{{- if not (or .Values.redis.external.url .Values.redis.external.host) -}}
{{- fail "redis.bundled.enabled=false needs redis.external.url or redis.external.host" -}}
{{- end -}}
{{- with .Values.redis.external.url -}}
{{- if not (or (hasPrefix "redis://" .) (hasPrefix "rediss://" .)) -}}
{{- fail "redis.external.url must start with redis:// or rediss://" -}}
{{- end -}}
{{- if contains "@" . -}}
{{- fail "redis.external.url must not hold credentials: put the password in the Secret named by redis.external.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.redis.external.tls.enabled (not .Values.redis.external.tls.existingSecret) -}}
{{- fail "redis.external.tls.enabled needs redis.external.tls.existingSecret (a Secret with the CA certificate)" -}}
{{- end -}}
{{- if and .Values.redis.external.tls.enabled .Values.redis.external.url (hasPrefix "redis://" .Values.redis.external.url) -}}
{{- fail "redis.external.tls.enabled needs a rediss:// URL" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment of Redis clients (app and exporter). Call with (dict "ctx" $ "role" "app"|"exporter") */}}
{{- define "gpe.redisEnv" -}}
{{- $ := .ctx -}}
{{- $prefix := default (include "gpe.fullname" $) $.Values.redis.keyPrefix -}}
- name: REDIS_ENABLED
  value: "true"
{{- if $.Values.redis.bundled.enabled }}
- name: REDIS_HOST
  value: {{ include "gpe.redisHost" $ | quote }}
- name: REDIS_PORT
  value: {{ include "gpe.redisPort" $ | quote }}
- name: REDIS_DB
  value: {{ $.Values.redis.db | quote }}
{{- else if $.Values.redis.external.url }}
- name: REDIS_URL
  value: {{ $.Values.redis.external.url | quote }}
{{- else if $.Values.redis.external.tls.enabled }}
- name: REDIS_URL
  value: {{ printf "rediss://%s:%v/%v" $.Values.redis.external.host $.Values.redis.external.port $.Values.redis.db | quote }}
{{- else }}
- name: REDIS_HOST
  value: {{ $.Values.redis.external.host | quote }}
- name: REDIS_PORT
  value: {{ $.Values.redis.external.port | quote }}
- name: REDIS_DB
  value: {{ $.Values.redis.db | quote }}
{{- end }}
{{- if and (not $.Values.redis.bundled.enabled) $.Values.redis.external.username }}
- name: REDIS_USERNAME
  value: {{ $.Values.redis.external.username | quote }}
{{- end }}
{{- with include "gpe.redisSecretName" $ }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ include "gpe.redisSecretKey" $ }}
{{- end }}
{{- if include "gpe.redisTLS" $ }}
{{- with $.Values.redis.external.tls }}
- name: REDIS_SSL_CA_CERTS
  value: /etc/gunicorn-prometheus/redis-tls/{{ .caKey }}
{{- if .certKey }}
- name: REDIS_SSL_CERTFILE
  value: /etc/gunicorn-prometheus/redis-tls/{{ .certKey }}
{{- end }}
{{- if .keyKey }}
- name: REDIS_SSL_KEYFILE
  value: /etc/gunicorn-prometheus/redis-tls/{{ .keyKey }}
{{- end }}
{{- end }}
{{- end }}
- name: REDIS_TTL_SECONDS
  value: {{ $.Values.redis.ttlSeconds | quote }}
{{- if eq $.Values.topology "daemonset" }}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: REDIS_KEY_PREFIX
  value: {{ $prefix | quote }}
{{- if eq .role "exporter" }}
- name: REDIS_SCOPE
  value: node
{{- end }}
{{- else }}
{{- /* sidecar + Redis: each pod's app and sidecar share a pod-unique prefix, so that no
       sidecar serves another pod's series */}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: REDIS_KEY_PREFIX
  value: {{ printf "%s:$(POD_NAME)" $prefix | quote }}
{{- if eq .role "exporter" }}
- name: REDIS_SCOPE
  value: all
{{- end }}
{{- end }}
{{- end -}}

{{- define "gpe.redisTLSVolume" -}}
{{- if include "gpe.redisTLS" . -}}
- name: redis-tls
  secret:
    secretName: {{ .Values.redis.external.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "gpe.redisTLSMount" -}}
{{- if include "gpe.redisTLS" . -}}
- name: redis-tls
  mountPath: /etc/gunicorn-prometheus/redis-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* Security contexts. Call with (dict "ctx" $ "override" .Values.app.securityContext) */}}
{{- define "gpe.podSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .ctx.Values.podSecurityContext) (deepCopy .override)) -}}
{{- end -}}
{{- define "gpe.securityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .ctx.Values.securityContext) (deepCopy .override)) -}}
{{- end -}}

{{/* The exporter container. Call with (dict "ctx" $) */}}
{{- define "gpe.exporterContainer" -}}
{{- $ := .ctx -}}
{{- $e := $.Values.exporter -}}
- name: exporter
  image: {{ include "gpe.image" (dict "ctx" $ "image" $e.image) }}
  imagePullPolicy: {{ $e.image.pullPolicy }}
  command:
    - gunicorn-prometheus-exporter
    - serve
  {{- with $e.extraArgs }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: metrics
      containerPort: {{ $e.port }}
      protocol: TCP
  env:
    - name: PROMETHEUS_METRICS_PORT
      value: {{ $e.port | quote }}
    - name: PROMETHEUS_BIND_ADDRESS
      value: {{ $e.bindAddress | quote }}
    {{- if include "gpe.redisEnabled" $ }}
    {{- include "gpe.redisEnv" (dict "ctx" $ "role" "exporter") | nindent 4 }}
    {{- else }}
    - name: PROMETHEUS_MULTIPROC_DIR
      value: {{ $e.multiprocDir | quote }}
    {{- end }}
    {{- if $e.tls.enabled }}
    - name: PROMETHEUS_SSL_CERTFILE
      value: /etc/gunicorn-prometheus/tls/{{ $e.tls.certKey }}
    - name: PROMETHEUS_SSL_KEYFILE
      value: /etc/gunicorn-prometheus/tls/{{ $e.tls.keyKey }}
    {{- if $e.tls.clientCAKey }}
    - name: PROMETHEUS_SSL_CLIENT_CAFILE
      value: /etc/gunicorn-prometheus/tls/{{ $e.tls.clientCAKey }}
    - name: PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED
      value: {{ $e.tls.clientAuthRequired | quote }}
    {{- end }}
    {{- end }}
    {{- with $e.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $e.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $e.livenessProbe }}
  livenessProbe:
    {{- include "gpe.probeScheme" (dict "probe" . "tls" $e.tls.enabled) | nindent 4 }}
  {{- end }}
  {{- /* In a sidecar, the exporter's readiness would take the app out of its Service */}}
  {{- if or (eq $.Values.topology "daemonset") $e.sidecarReadiness }}
  {{- with $e.readinessProbe }}
  readinessProbe:
    {{- include "gpe.probeScheme" (dict "probe" . "tls" $e.tls.enabled) | nindent 4 }}
  {{- end }}
  {{- end }}
  {{- with $e.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "gpe.securityContext" (dict "ctx" $ "override" $e.securityContext) | nindent 4 }}
  volumeMounts:
    - name: exporter-tmp
      mountPath: /tmp
    {{- if not (include "gpe.redisEnabled" $) }}
    - name: multiproc
      mountPath: {{ $e.multiprocDir }}
    {{- end }}
    {{- if $e.tls.enabled }}
    - name: metrics-tls
      mountPath: /etc/gunicorn-prometheus/tls
      readOnly: true
    {{- end }}
    {{- with include "gpe.redisTLSMount" $ }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with $e.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* An httpGet probe gets scheme HTTPS when the metrics endpoint serves TLS */}}
{{- define "gpe.probeScheme" -}}
{{- $p := deepCopy .probe -}}
{{- if and .tls (hasKey $p "httpGet") -}}
{{- $_ := set $p.httpGet "scheme" "HTTPS" -}}
{{- end -}}
{{- toYaml $p -}}
{{- end -}}

{{- define "gpe.exporterVolumes" -}}
{{- $e := .Values.exporter -}}
- name: exporter-tmp
  emptyDir:
    sizeLimit: 16Mi
{{- if $e.tls.enabled }}
- name: metrics-tls
  secret:
    secretName: {{ required "exporter.tls.enabled needs exporter.tls.existingSecret" $e.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- with $e.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Autoscaling: the KEDA ScaledObject is rendered (enabled, and KEDA's API is there or forced). */}}
{{- define "gpe.scaledObject" -}}
{{- if and .Values.app.enabled .Values.autoscaling.enabled (or .Values.autoscaling.force (.Capabilities.APIVersions.Has "keda.sh/v1alpha1")) -}}true{{- end -}}
{{- end -}}

{{/* Saturation of this release's workers, 0..1: in-flight requests over worker capacity. */}}
{{- define "gpe.saturationQuery" -}}
{{- if .Values.autoscaling.query -}}
{{- .Values.autoscaling.query -}}
{{- else -}}
{{- $sel := include "gpe.ruleSelector" . -}}
{{- printf "sum(gunicorn_worker_in_flight_requests{%s}) / sum(gunicorn_worker_capacity{%s})" $sel $sel -}}
{{- end -}}
{{- end -}}
