{{- define "llamacloud-collector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llamacloud-collector.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llamacloud-collector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llamacloud-collector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llamacloud-collector.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "llamacloud-collector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "llamacloud-collector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llamacloud-collector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "llamacloud-collector.secretName" -}}
{{- default (include "llamacloud-collector.fullname" .) .Values.apiKey.existingSecret }}
{{- end }}

{{- define "llamacloud-collector.sharded" -}}
{{- if gt (int .Values.sharding.shards) 1 }}true{{ end }}
{{- end }}

{{/* HTTPS when the web config turns TLS on (or the ServiceMonitor says so), else HTTP; upper case for probes. */}}
{{- define "llamacloud-collector.scheme" -}}
{{- if .Values.serviceMonitor.scheme -}}
{{- upper .Values.serviceMonitor.scheme -}}
{{- else if and .Values.webConfig.existingSecret .Values.webConfig.tls -}}
HTTPS
{{- else -}}
HTTP
{{- end -}}
{{- end }}

{{/* Probes follow TLS from the web config only: they carry no credentials and need none. */}}
{{- define "llamacloud-collector.probeScheme" -}}
{{- if and .Values.webConfig.existingSecret .Values.webConfig.tls -}}
HTTPS
{{- else -}}
HTTP
{{- end -}}
{{- end }}
