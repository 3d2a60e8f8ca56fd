{{/* Chart name. */}}
{{- define "crm.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A service's resource name: <release>-<service>, at most 63 characters. */}}
{{- define "crm.fullname" -}}
{{- $root := index . 0 -}}{{- $service := index . 1 -}}
{{- printf "%s-%s" $root.Release.Name $service | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "crm.labels" -}}
{{- $root := index . 0 -}}{{- $service := index . 1 -}}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: {{ include "crm.name" $root }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
{{ include "crm.selectorLabels" (list $root $service) }}
{{- end -}}

{{/* Labels that select a service's pods. */}}
{{- define "crm.selectorLabels" -}}
{{- $root := index . 0 -}}{{- $service := index . 1 -}}
app.kubernetes.io/name: {{ include "crm.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ $service }}
{{- end -}}

{{/* A service's settings: `defaults` overridden by its own keys (as YAML). */}}
{{- define "crm.settings" -}}
{{- $root := index . 0 -}}{{- $service := index . 1 -}}
{{- $settings := deepCopy $root.Values.defaults -}}
{{- include "crm.merge" (list $settings (index $root.Values.services $service)) -}}
{{- $_ := set $settings "name" $service -}}
{{- toYaml $settings -}}
{{- end -}}

{{/* Deep-merges map `src` into map `dst` in place; any `src` value, `false` and `0`
included, wins (sprig's mergeOverwrite skips those). */}}
{{- define "crm.merge" -}}
{{- $dst := index . 0 -}}{{- $src := index . 1 -}}
{{- range $key, $value := $src -}}
{{- if and (kindIs "map" $value) (kindIs "map" (get $dst $key)) -}}
{{- include "crm.merge" (list (get $dst $key) $value) -}}
{{- else -}}
{{- $_ := set $dst $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The image of a binary. */}}
{{- define "crm.image" -}}
{{- $root := index . 0 -}}{{- $binary := index . 1 -}}
{{- printf "%s/%s:%s" $root.Values.image.repository $binary (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}

{{/* The configuration file of a service (TOML). */}}
{{- define "crm.config" -}}
{{- $root := index . 0 -}}{{- $service := index . 1 -}}{{- $s := index . 2 -}}
{{- $base := dict
  "server" (dict "listen" (printf "0.0.0.0:%v" $s.port) "allow_plaintext" true "shutdown_grace_secs" (int $s.shutdownGraceSeconds) "shutdown_delay_secs" (int $s.shutdownDelaySeconds))
  "database" (dict "migrate_on_start" (not $root.Values.migrations.enabled) "max_connections" (int $root.Values.database.maxConnections))
  "auth" (dict "algorithm" $root.Values.auth.algorithm "issuer" $root.Values.auth.issuer "audience" $root.Values.auth.audience)
  "log" (dict "format" $root.Values.telemetry.logFormat "level" $root.Values.telemetry.logLevel)
-}}
{{- if ne $root.Values.auth.algorithm "HS256" }}
{{- $_ := set $base.auth "public_key_path" "/etc/crm/auth/public.pem" -}}
{{- end }}
{{- if $s.metrics.enabled }}
{{- $_ := set $base "metrics" (dict "listen" (printf "0.0.0.0:%v" $s.metrics.port)) -}}
{{- end }}
{{- if $s.usesPermissions }}
{{- $permissions := include "crm.settings" (list $root "permissions") | fromYaml -}}
{{- $own := (index $root.Values.services $service).config | default dict -}}
{{- if $permissions.enabled }}
{{- $_ := set $base "permissions" (dict "url" (printf "http://%s:%v" (include "crm.fullname" (list $root "permissions")) $permissions.port) "token_file" "/etc/crm/service-token/token") -}}
{{- else if not (($own.permissions | default dict).url) }}
{{- fail (printf "services.%s calls the permissions service: enable services.permissions, or set services.%s.config.permissions.url" $service $service) -}}
{{- else }}
{{- $_ := set $base "permissions" (dict "token_file" "/etc/crm/service-token/token") -}}
{{- end }}
{{- end }}
{{- /* ticketing reads customer tiers from customer-profile. */ -}}
{{- if eq $service "ticketing" }}
{{- $profiles := include "crm.settings" (list $root "customer-profile") | fromYaml -}}
{{- if $profiles.enabled }}
{{- $_ := set $base "ticketing" (dict "customer_profile_url" (printf "http://%s:%v" (include "crm.fullname" (list $root "customer-profile")) $profiles.port)) -}}
{{- end }}
{{- end }}
{{- /* marketing-segmentation follows customer-profile's (and analytics') change feed and serves campaign tracking over HTTP. */ -}}
{{- if eq $service "marketing-segmentation" }}
{{- $profiles := include "crm.settings" (list $root "customer-profile") | fromYaml -}}
{{- $segmentation := dict "tracking" (dict "listen" (ternary (printf "0.0.0.0:%v" $s.http.port) "" $s.http.enabled)) -}}
{{- if $profiles.enabled }}
{{- $_ := set $segmentation "customer_profile_url" (printf "http://%s:%v" (include "crm.fullname" (list $root "customer-profile")) $profiles.port) -}}
{{- end }}
{{- /* Win-back journeys follow analytics' ChurnRiskRaised. */ -}}
{{- $analytics := include "crm.settings" (list $root "analytics") | fromYaml -}}
{{- if $analytics.enabled }}
{{- $_ := set $segmentation "analytics_url" (printf "http://%s:%v" (include "crm.fullname" (list $root "analytics")) $analytics.port) -}}
{{- end }}
{{- $_ := set $base "segmentation" $segmentation -}}
{{- end }}
{{- /* analytics follows the feeds of customer-profile, ticketing and marketing-segmentation. */ -}}
{{- if eq $service "analytics" }}
{{- $analytics := dict -}}
{{- range $source, $key := dict "customer-profile" "customer_profile_url" "ticketing" "ticketing_url" "marketing-segmentation" "segmentation_url" }}
{{- $followed := include "crm.settings" (list $root $source) | fromYaml -}}
{{- if $followed.enabled }}
{{- $_ := set $analytics $key (printf "http://%s:%v" (include "crm.fullname" (list $root $source)) $followed.port) -}}
{{- end }}
{{- end }}
{{- $_ := set $base "analytics" $analytics -}}
{{- end }}
{{- /* customer-profile's 360 view: open tickets, RFM and segments, churn and CLV. */ -}}
{{- if eq $service "customer-profile" }}
{{- $sections := dict -}}
{{- range $source, $key := dict "ticketing" "ticketing_url" "marketing-segmentation" "segmentation_url" "analytics" "analytics_url" }}
{{- $owner := include "crm.settings" (list $root $source) | fromYaml -}}
{{- if $owner.enabled }}
{{- $_ := set $sections $key (printf "http://%s:%v" (include "crm.fullname" (list $root $source)) $owner.port) -}}
{{- end }}
{{- end }}
{{- $_ := set $base "customer_profile" (dict "sections" $sections) -}}
{{- end }}
{{- /* From the values as parsed (integers stay integers), not from $s. */ -}}
{{- include "crm.merge" (list $base (deepCopy (default dict $root.Values.defaults.config))) -}}
{{- include "crm.merge" (list $base (deepCopy (default dict (index $root.Values.services $service).config))) -}}
{{- include "crm.integers" $base -}}
{{- toToml $base -}}
{{- end -}}

{{/* Environment shared by a service's pods and its migration Job. */}}
{{- define "crm.env" -}}
{{- $root := index . 0 -}}{{- $s := index . 1 -}}
- name: CRM__DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.database.existingSecret }}
      key: {{ $root.Values.database.urlKey }}
{{- if $root.Values.redis.enabled }}
- name: CRM__REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.redis.existingSecret }}
      key: {{ $root.Values.redis.urlKey }}
{{- end }}
{{- if eq $root.Values.auth.algorithm "HS256" }}
- name: CRM__AUTH__JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.auth.existingSecret }}
      key: jwt-secret
{{- end }}
- name: CRM__PAGING__TOKEN_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.auth.existingSecret }}
      key: paging-secret
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "service.namespace={{ $root.Release.Name }},service.version={{ $root.Chart.AppVersion }},k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME)"
{{- with $root.Values.telemetry.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $root.Values.telemetry.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $root.Values.telemetry.samplerArg | quote }}
{{- with $s.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Secrets and config mounted into a service's pods and its migration Job. */}}
{{- define "crm.volumes" -}}
{{- $root := index . 0 -}}{{- $s := index . 1 -}}{{- $configMap := index . 2 -}}
- name: config
  configMap:
    name: {{ $configMap }}
{{- if ne $root.Values.auth.algorithm "HS256" }}
- name: auth
  secret:
    secretName: {{ $root.Values.auth.existingSecret }}
    items:
      - key: public.pem
        path: public.pem
{{- end }}
{{- if $s.usesPermissions }}
- name: service-token
  secret:
    secretName: {{ $root.Values.serviceTokens.existingSecret }}
    items:
      - key: {{ $s.name }}
        path: token
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "crm.volumeMounts" -}}
{{- $root := index . 0 -}}{{- $s := index . 1 -}}
- name: config
  mountPath: /etc/crm/config
  readOnly: true
{{- if ne $root.Values.auth.algorithm "HS256" }}
- name: auth
  mountPath: /etc/crm/auth
  readOnly: true
{{- end }}
{{- if $s.usesPermissions }}
- name: service-token
  mountPath: /etc/crm/service-token
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Environment variables taken whole from Secrets. */}}
{{- define "crm.envFrom" -}}
{{- $root := index . 0 -}}{{- $s := index . 1 -}}
{{- if $s.usesEncryption }}
envFrom:
  - secretRef:
      name: {{ $root.Values.encryption.existingSecret }}
{{- end }}
{{- end -}}

{{/* Turns whole numbers back into integers in place (Helm reads numbers in values
files as floats, which TOML would write as `14.0` where a service expects `14`). */}}
{{- define "crm.integers" -}}
{{- $map := . -}}
{{- range $key, $value := $map -}}
{{- if kindIs "map" $value -}}
{{- include "crm.integers" $value -}}
{{- else if and (kindIs "float64" $value) (eq $value (floor $value)) -}}
{{- $_ := set $map $key (int64 $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}
