{{- define "hzr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hzr.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "hzr.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "hzr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hanzo-registry
{{- end -}}

{{/* selector labels of one component: (dict "root" $ "component" "distribution") */}}
{{- define "hzr.selector" -}}
app.kubernetes.io/name: {{ include "hzr.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "hzr.secretName" -}}
{{- default (include "hzr.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "hzr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "hzr.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "hzr.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{/* The services whose Deployment is rendered, in a fixed order. */}}
{{- define "hzr.components" -}}
{{- range $name := list "distribution" "scanner" "signer" "gc" "replicator" "webhooks" -}}
{{- if (index $.Values.services $name).enabled }}{{ $name }} {{ end -}}
{{- end -}}
{{- end -}}
