{{/* Endpoint settings shared by the ServiceMonitor and the PodMonitor. Call with (dict "ctx" $ "m" .Values.serviceMonitor) */}}
{{- define "gpe.monitorEndpoint" -}}
{{- $ := .ctx -}}
{{- $m := .m -}}
port: metrics
path: /metrics
{{- with $m.interval }}
interval: {{ . }}
{{- end }}
{{- with $m.scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
honorLabels: {{ $m.honorLabels }}
{{- if $.Values.exporter.tls.enabled }}
scheme: https
tlsConfig:
  insecureSkipVerify: {{ $m.tlsConfig.insecureSkipVerify }}
  {{- with $m.tlsConfig.serverName }}
  serverName: {{ . }}
  {{- end }}
{{- else }}
scheme: http
{{- end }}
{{- with $m.relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $m.metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Spec fields of native-histogram scraping, shared by the ServiceMonitor and the PodMonitor. Call with the monitor's values. */}}
{{- define "gpe.monitorNativeHistograms" -}}
{{- with .nativeHistograms }}
{{- if .enabled }}
scrapeProtocols:
  - PrometheusProto
  - OpenMetricsText1.0.0
  - OpenMetricsText0.0.1
  - PrometheusText0.0.4
scrapeClassicHistograms: {{ .keepClassic }}
{{- if not (kindIs "invalid" .scrapeNativeHistograms) }}
scrapeNativeHistograms: {{ .scrapeNativeHistograms }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
