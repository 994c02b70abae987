{{/* Names, labels and the checks no JSON Schema can express. */}}

{{- define "quantum.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "quantum.fullname" -}}
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

{{/* The name of one component's objects: <fullname>-worker, <fullname>-bridge. */}}
{{- define "quantum.componentName" -}}
{{- printf "%s-%s" (include "quantum.fullname" .root | trunc 56 | trimSuffix "-") .component }}
{{- end }}

{{- define "quantum.selectorLabels" -}}
app.kubernetes.io/name: {{ include "quantum.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "quantum.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "quantum.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: quantum-suite
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component; called with (dict "root" $ "component" "worker"). */}}
{{- define "quantum.componentSelectorLabels" -}}
{{ include "quantum.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "quantum.componentLabels" -}}
{{ include "quantum.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The Prometheus job of a component: the name the dashboards and the alert rules select. */}}
{{- define "quantum.job" -}}
quantum-{{ .component }}
{{- end }}

{{- define "quantum.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- if .Values.image.digest }}
{{- $ref = printf "%s@%s" $ref .Values.image.digest }}
{{- end }}
{{- $ref }}
{{- end }}

{{- define "quantum.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "quantum.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Whether a component runs more than one pod (a fixed count above one, or autoscaling). */}}
{{- define "quantum.scaled" -}}
{{- if or .autoscaling.enabled (gt (int .replicas) 1) }}true{{ end }}
{{- end }}

{{/* Whether Temporal is reached over TLS: asked for, or implied by an API key or a client certificate. */}}
{{- define "quantum.temporalTLS" -}}
{{- $t := .Values.temporal }}
{{- if or $t.tls $t.apiKey.secretName $t.clientCertificate.secretName }}true{{ else }}false{{ end }}
{{- end }}

{{/* The non-secret settings every component reads (the ConfigMap), as a dict of QUANTUM_* names to strings. */}}
{{- define "quantum.settings" -}}
{{- $v := .Values }}
{{- $s := dict
  "QUANTUM_TEMPORAL_ADDRESS" $v.temporal.address
  "QUANTUM_TEMPORAL_NAMESPACE" $v.temporal.namespace
  "QUANTUM_TEMPORAL_TLS" (include "quantum.temporalTLS" .)
  "QUANTUM_TASK_QUEUE" $v.temporal.taskQueue
  "QUANTUM_NATS_URL" $v.nats.url
  "QUANTUM_STREAM_REPLICAS" (toString $v.nats.streamReplicas)
  "QUANTUM_METRICS_PORT" (toString $v.metrics.port)
  "QUANTUM_METRICS_HOST" "0.0.0.0"
  "QUANTUM_DATA_DIR" "/data"
  "QUANTUM_WORKER_SHUTDOWN_SECONDS" (toString $v.worker.shutdownSeconds)
  "QUANTUM_BRIDGE_BATCH" (toString $v.bridge.batch)
  "QUANTUM_BRIDGE_CONSUMER" $v.bridge.consumer
}}
{{- with $v.llm.baseUrl }}{{ $_ := set $s "QUANTUM_LLM_BASE_URL" . }}{{ end }}
{{- with $v.llm.model }}{{ $_ := set $s "QUANTUM_LLM_MODEL" . }}{{ end }}
{{- with $v.qdrant.url }}{{ $_ := set $s "QUANTUM_QDRANT_URL" . }}{{ end }}
{{- with $v.reviewers.groups }}{{ $_ := set $s "QUANTUM_REVIEWER_GROUPS" (toJson .) }}{{ end }}
{{- with $v.reviewers.reviewDefaults }}{{ $_ := set $s "QUANTUM_REVIEW_DEFAULTS" (toJson .) }}{{ end }}
{{- range $name, $value := $v.settings }}
{{- if hasKey $s $name }}
{{- fail (printf "settings.%s: the chart sets %s from its own values (see values.yaml); set it there" $name $name) }}
{{- end }}
{{- $_ := set $s $name $value }}
{{- end }}
{{- toYaml $s }}
{{- end }}

{{/* The checks across values: called once per render, from the ConfigMap. */}}
{{- define "quantum.validate" -}}
{{- $w := .Values.worker }}
{{- if ge (float64 $w.shutdownSeconds) (float64 $w.terminationGracePeriodSeconds) }}
{{- fail (printf "worker.shutdownSeconds (%v) must be below worker.terminationGracePeriodSeconds (%v): the pod is killed when the grace period ends" $w.shutdownSeconds $w.terminationGracePeriodSeconds) }}
{{- end }}
{{- if and (include "quantum.scaled" $w) (not $w.persistence.existingClaim) }}
{{- fail "worker.persistence.existingClaim is required with more than one worker (worker.replicas > 1 or worker.autoscaling.enabled): a run's stages run on any worker and read the files earlier stages wrote, so the workers need one ReadWriteMany volume" }}
{{- end }}
{{- range $component := list "worker" "bridge" }}
{{- $a := (get $.Values $component).autoscaling }}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- fail (printf "%s.autoscaling.minReplicas (%v) must not exceed %s.autoscaling.maxReplicas (%v)" $component $a.minReplicas $component $a.maxReplicas) }}
{{- end }}
{{- end }}
{{- $keys := .Values.reviewers.keys }}
{{- if and $keys.secretName $keys.configMapName }}
{{- fail "reviewers.keys: set secretName or configMapName, not both" }}
{{- end }}
{{- end }}
