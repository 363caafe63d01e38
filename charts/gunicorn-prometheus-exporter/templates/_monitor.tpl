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

{{/* The scrape protocols and histogram settings of a monitor's spec, shared by the ServiceMonitor and the PodMonitor. Call with the monitor's values. With nativeHistograms.enabled the protobuf format comes first (the only one that carries native histograms), the configured protocols after it. */}}
{{- define "gpe.monitorScrape" -}}
{{- $protocols := .scrapeProtocols | default list -}}
{{- $native := .nativeHistograms | default dict -}}
{{- if $native.enabled -}}
{{- if not $protocols -}}
{{- $protocols = list "OpenMetricsText1.0.0" "OpenMetricsText0.0.1" "PrometheusText0.0.4" -}}
{{- end -}}
{{- $protocols = prepend (without $protocols "PrometheusProto") "PrometheusProto" -}}
{{- end -}}
{{- with $protocols }}
scrapeProtocols:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $native.enabled }}
scrapeClassicHistograms: {{ $native.keepClassic }}
{{- if not (kindIs "invalid" $native.scrapeNativeHistograms) }}
scrapeNativeHistograms: {{ $native.scrapeNativeHistograms }}
{{- end }}
{{- end }}
{{- end -}}
