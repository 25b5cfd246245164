{{- define "llamacloud-collector.podTemplate" -}}
metadata:
  labels:
    {{- include "llamacloud-collector.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "llamacloud-collector.serviceAccountName" . }}
  automountServiceAccountToken: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: collector
      image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - run
        - --config=/etc/llamacloud-collector/config.yaml
        - --listen=0.0.0.0:9742
        {{- if .Values.persistence.enabled }}
        - --state-path=/var/lib/llamacloud-collector/state.db
        {{- end }}
        {{- if include "llamacloud-collector.sharded" . }}
        - --total-shards={{ .Values.sharding.shards }}
        {{- end }}
        {{- if .Values.webConfig.existingSecret }}
        - --web-config=/etc/llamacloud-collector/web/{{ .Values.webConfig.key }}
        {{- end }}
        {{- range .Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        - name: LLAMA_CLOUD_API_KEY
          valueFrom:
            secretKeyRef:
              name: {{ include "llamacloud-collector.secretName" . }}
              key: {{ .Values.apiKey.key }}
        {{- if include "llamacloud-collector.sharded" . }}
        - name: COLLECTOR_SHARD
          valueFrom:
            fieldRef:
              fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: http-metrics
          containerPort: 9742
          protocol: TCP
      {{- with .Values.probes.liveness }}
      {{- if .enabled }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: http-metrics
          scheme: {{ include "llamacloud-collector.probeScheme" $ }}
        {{- toYaml (omit . "enabled") | nindent 8 }}
      {{- end }}
      {{- end }}
      {{- with .Values.probes.readiness }}
      {{- if .enabled }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http-metrics
          scheme: {{ include "llamacloud-collector.probeScheme" $ }}
        {{- toYaml (omit . "enabled") | nindent 8 }}
      {{- end }}
      {{- end }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/llamacloud-collector
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- if .Values.persistence.enabled }}
        - name: state
          mountPath: /var/lib/llamacloud-collector
        {{- end }}
        {{- if .Values.webConfig.existingSecret }}
        - name: web-config
          mountPath: /etc/llamacloud-collector/web
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "llamacloud-collector.fullname" . }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if and .Values.persistence.enabled (not (include "llamacloud-collector.sharded" .)) }}
    - name: state
      persistentVolumeClaim:
        claimName: {{ include "llamacloud-collector.fullname" . }}
    {{- end }}
    {{- if .Values.webConfig.existingSecret }}
    - name: web-config
      secret:
        secretName: {{ .Values.webConfig.existingSecret }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
