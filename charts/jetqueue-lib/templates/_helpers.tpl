{{/*
Helpers of the queue-worker and gateway charts, which load this library from charts/jetqueue-lib (a symlink
to ../../jetqueue-lib). Each is called with the including chart's context, so .Chart, .Release and .Values
are that chart's; both charts have the same `nats` values.
*/}}

{{/* Name of the release's objects: the release name. */}}
{{- define "jetqueue.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the release's pods. */}}
{{- define "jetqueue.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object; call with (dict "context" $ "component" "<name>"). */}}
{{- define "jetqueue.labels" -}}
{{- $ctx := .context -}}
helm.sh/chart: {{ printf "%s-%s" $ctx.Chart.Name $ctx.Chart.Version | replace "+" "_" }}
{{ include "jetqueue.selectorLabels" $ctx }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: jetqueue
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
{{- end -}}

{{/* The pods' ServiceAccount: the release's own when serviceAccount.create, else the named or default one. */}}
{{- define "jetqueue.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "jetqueue.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* JETQUEUE_NATS_* variables from nats.url, nats.tls and nats.auth (Secrets); for the app and test pods. */}}
{{- define "jetqueue.natsEnv" -}}
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
{{- if .Values.nats.tls.insecure }}
- name: JETQUEUE_NATS_TLS_INSECURE
  value: "true"
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

{{/* JETQUEUE_OPENFAAS_USER and _PASSWORD from the Secret openfaas.auth names (the OpenFaaS gateway's basic-auth). */}}
{{- define "jetqueue.openfaasEnv" -}}
{{- with .Values.openfaas.auth }}
{{- if .secretName }}
- name: JETQUEUE_OPENFAAS_USER
  valueFrom: {secretKeyRef: {name: {{ .secretName | quote }}, key: {{ .userKey | quote }}}}
- name: JETQUEUE_OPENFAAS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ .secretName | quote }}, key: {{ .passwordKey | quote }}}}
{{- end }}
{{- end }}
{{- end -}}

{{/* The pod spec's imagePullSecrets and topologySpreadConstraints (a map keyed by topologyKey, as the NATS chart
takes it: each entry gets its topologyKey, maxSkew 1 and whenUnsatisfiable ScheduleAnyway unless set, and, unless it
has one, a labelSelector for the release's pods). */}}
{{- define "jetqueue.podScheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
{{- range $key, $c := . }}
  - topologyKey: {{ $key | quote }}
    maxSkew: {{ $c.maxSkew | default 1 }}
    whenUnsatisfiable: {{ $c.whenUnsatisfiable | default "ScheduleAnyway" }}
    {{- with omit $c "topologyKey" "maxSkew" "whenUnsatisfiable" }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- if not (hasKey $c "labelSelector") }}
    labelSelector:
      matchLabels:
        {{- include "jetqueue.selectorLabels" $ | nindent 8 }}
    {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Mounts of the NATS TLS and creds Secrets that jetqueue.natsEnv points at. */}}
{{- define "jetqueue.natsVolumeMounts" -}}
{{- if .Values.nats.tls.enabled }}
- {name: nats-tls, mountPath: /etc/jetqueue/nats-tls, readOnly: true}
{{- end }}
{{- if eq .Values.nats.auth.method "creds" }}
- {name: nats-creds, mountPath: /etc/jetqueue/nats-creds, readOnly: true}
{{- end }}
{{- end -}}

{{/* Volumes of the NATS TLS and creds Secrets. */}}
{{- define "jetqueue.natsVolumes" -}}
{{- if .Values.nats.tls.enabled }}
- name: nats-tls
  secret: {secretName: {{ .Values.nats.tls.secretName | quote }}}
{{- end }}
{{- if eq .Values.nats.auth.method "creds" }}
- name: nats-creds
  secret: {secretName: {{ .Values.nats.auth.secretName | quote }}}
{{- end }}
{{- end -}}

{{/* Pod securityContext: non-root, RuntimeDefault seccomp (restricted Pod Security Standard). */}}
{{- define "jetqueue.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* Container securityContext: read-only root filesystem, no privilege escalation, no capabilities. */}}
{{- define "jetqueue.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities: {drop: [ALL]}
{{- end -}}
