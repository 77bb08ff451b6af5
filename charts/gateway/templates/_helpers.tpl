{{- define "gateway.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: jetqueue
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gateway.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* NATS connection variables and mounts: the same for the worker and its test pod. */}}
{{- define "gateway.natsEnv" -}}
- name: JETQUEUE_NATS_URL
  value: {{ .Values.nats.url | quote }}
{{- if .Values.nats.tls.enabled }}
- name: JETQUEUE_NATS_TLS_CA
  value: {{ printf "/etc/jetqueue/nats-tls/%s" .Values.nats.tls.caKey | quote }}
{{- if .Values.nats.tls.clientCert }}
- name: JETQUEUE_NATS_TLS_CERT
  value: /etc/jetqueue/nats-tls/tls.crt
- name: JETQUEUE_NATS_TLS_KEY
  value: /etc/jetqueue/nats-tls/tls.key
{{- end }}
{{- end }}
{{- with .Values.nats.auth }}
{{- if eq .method "creds" }}
- name: JETQUEUE_NATS_CREDS
  value: {{ printf "/etc/jetqueue/nats-creds/%s" .credsKey | quote }}
{{- else if eq .method "userPassword" }}
- name: JETQUEUE_NATS_USER
  valueFrom: {secretKeyRef: {name: {{ .secretName | quote }}, key: {{ .userKey | quote }}}}
- name: JETQUEUE_NATS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ .secretName | quote }}, key: {{ .passwordKey | quote }}}}
{{- else if eq .method "token" }}
- name: JETQUEUE_NATS_TOKEN
  valueFrom: {secretKeyRef: {name: {{ .secretName | quote }}, key: {{ .tokenKey | quote }}}}
{{- end }}
{{- end }}
{{- end -}}

{{- define "gateway.natsVolumeMounts" -}}
{{- if .Values.nats.tls.enabled }}
- {name: nats-tls, mountPath: /etc/jetqueue/nats-tls, readOnly: true}
{{- end }}
{{- if eq .Values.nats.auth.method "creds" }}
- {name: nats-creds, mountPath: /etc/jetqueue/nats-creds, readOnly: true}
{{- end }}
{{- end -}}

{{- define "gateway.natsVolumes" -}}
{{- if .Values.nats.tls.enabled }}
- name: nats-tls
  secret: {secretName: {{ .Values.nats.tls.secretName | quote }}}
{{- end }}
{{- if eq .Values.nats.auth.method "creds" }}
- name: nats-creds
  secret: {secretName: {{ .Values.nats.auth.secretName | quote }}}
{{- end }}
{{- end -}}

{{- define "gateway.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "gateway.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities: {drop: [ALL]}
{{- end -}}
