{{- define "prfaas.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "prfaas.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "prfaas.labels" -}}
app.kubernetes.io/name: {{ include "prfaas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "prfaas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "prfaas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "prfaas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "prfaas.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "prfaas.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The router image (Dockerfile.router, the `router` extra): routerImage, else the operator
image's repository with a -router suffix and the same tag. */}}
{{- define "prfaas.routerImage" -}}
{{- $default := printf "%s-router:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- default $default .Values.routerImage -}}
{{- end -}}
