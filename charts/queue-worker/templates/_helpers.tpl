{{/*
The shared helpers (names, the NATS connection, security contexts) are in the jetqueue-lib library chart
(charts/jetqueue-lib); the container's JETQUEUE_* environment is generated into _env.tpl.
*/}}

{{/* Labels of every object: jetqueue-lib's, plus the queue, since each queue is its own release. */}}
{{- define "queue-worker.labels" -}}
{{ include "jetqueue.labels" (dict "context" . "component" "queue-worker") }}
jetqueue.dev/queue: {{ .Values.queue.name }}
{{- end -}}
