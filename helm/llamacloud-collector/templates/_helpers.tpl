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

{{/*
A Kubernetes memory quantity ("256Mi", "1G", "268435456") in bytes; empty when it is not one of those forms.
*/}}
{{- define "llamacloud-collector.bytes" -}}
{{- $q := toString . -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- $unit := trimPrefix $number $q -}}
{{- if and $number (hasKey $units $unit) -}}
{{- mulf (float64 $number) (get $units $unit) | int64 -}}
{{- end -}}
{{- end -}}

{{/*
Memory the collector may need at once, in bytes: about 3 x (one response cap + 1 MiB per fetch worker), the
bodies in flight as bytes, decoded text and parsed objects, plus 96 MiB for the process and its state.
*/}}
{{- /* The memory budget of README "Sizing", from the settings, without the sessions' share (1.5 KiB each):
64 MiB at rest + 2 x the response cap + 1 MiB per fetch worker (the bodies in flight: the large one as bytes and
as text) + 80 bytes per event of the largest history (at most one cap of 16-byte events) + 48 MiB for 1,024
scraper connections. */ -}}
{{- define "llamacloud-collector.memoryNeeded" -}}
{{- $c := .Values.config -}}
{{- $cap := int64 $c.maxResponseBytes -}}
{{- $events := min (int64 $c.maxEventsPerSession) (div $cap 16) -}}
{{- $sessions := div (mul (int64 .Values.sizing.sessions) 524288) (mul 1000 (int64 .Values.sharding.shards)) -}}
{{- add 67108864 (mul 2 $cap) (mul (int64 $c.maxConcurrency) 1048576) (mul 80 $events) 50331648 $sessions -}}
{{- end -}}

{{/* config.projectId as a list: one ID (as before several) or a list. */}}
{{- define "llamacloud-collector.projects" -}}
{{- $ids := .Values.config.projectId -}}
{{- if kindIs "string" $ids -}}{{- $ids = ternary (list) (list $ids) (empty $ids) -}}{{- end -}}
{{- toJson (default (list) $ids) -}}
{{- end -}}
