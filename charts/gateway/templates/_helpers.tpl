{{/*
The shared helpers (names, the NATS connection, security contexts) are in the jetqueue-lib library chart
(charts/jetqueue-lib); the container's JETQUEUE_* environment is generated into _env.tpl.
*/}}

{{/* Labels of every object. */}}
{{- define "gateway.labels" -}}
{{ include "jetqueue.labels" (dict "context" . "component" "gateway") }}
{{- end -}}

{{/* JETQUEUE_AUTH_* from the Secret gateway.auth names: key `token` (bearer), `username` and `password` (basic).
worker/settings.py points the AUTH settings here; _env.tpl and the test pod include it. */}}
{{- define "gateway.authEnv" -}}
{{- with .Values.gateway.auth }}
{{- if eq .method "bearer" }}
- name: JETQUEUE_AUTH_TOKEN
  valueFrom: {secretKeyRef: {name: {{ .secretName | quote }}, key: token}}
{{- else if eq .method "basic" }}
- name: JETQUEUE_AUTH_USER
  valueFrom: {secretKeyRef: {name: {{ .secretName | quote }}, key: username}}
- name: JETQUEUE_AUTH_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ .secretName | quote }}, key: password}}
{{- end }}
{{- end }}
{{- end -}}
