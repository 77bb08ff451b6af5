{{/*
The shared helpers (names, the NATS connection, security contexts) are in the jetqueue-lib library chart
(charts/jetqueue-lib); the container's JETQUEUE_* environment is generated into _env.tpl.
*/}}

{{/* Labels of every object: jetqueue-lib's, plus the queue, since each queue is its own release. */}}
{{- define "queue-worker.labels" -}}
{{ include "jetqueue.labels" (dict "context" . "component" "queue-worker") }}
jetqueue.dev/queue: {{ .Values.queue.name }}
{{- end -}}

{{/* The callback signing keys, from an existing Secret (worker/signing.py). */}}
{{- define "queue-worker.signingEnv" -}}
{{- with .Values.queue.callbackSigning }}
{{- if .secretName }}
- name: JETQUEUE_CALLBACK_SIGNING_KEYS
  valueFrom: {secretKeyRef: {name: {{ .secretName | quote }}, key: {{ .key | quote }}}}
{{- end }}
{{- end }}
{{- end -}}
