{{/* NetworkPolicy rule fragments */}}
{{- define "gpe.np.metricsIngress" -}}
{{- $ := . -}}
# Scrapes of the metrics port: the Prometheus peers from values, and the helm test pod.
- ports:
    - port: metrics
      protocol: TCP
  from:
    {{- with $.Values.networkPolicy.metricsFrom }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    - podSelector:
        matchLabels:
          {{- include "gpe.selectorLabels" (dict "ctx" $ "component" "test") | nindent 10 }}
{{- end -}}
{{- define "gpe.np.egress" -}}
{{- $ := .ctx -}}
{{- $np := $.Values.networkPolicy -}}
# DNS
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  {{- with $np.dns.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if include "gpe.redisEnabled" $ }}
# Redis
- ports:
    - port: {{ include "gpe.redisPort" $ | int }}
      protocol: TCP
  {{- if $.Values.redis.bundled.enabled }}
  to:
    - podSelector:
        matchLabels:
          {{- include "gpe.selectorLabels" (dict "ctx" $ "component" "redis") | nindent 10 }}
  {{- else if $np.externalRedisTo }}
  to:
    {{- toYaml $np.externalRedisTo | nindent 4 }}
  {{- end }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}
