# Custody on Cloud Run: one service, one dedicated service account, one
# recordings bucket, the config in Secret Manager. Nothing here grants more
# than the gateway needs; see iam.tf, bucket.tf and secrets.tf.

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  labels = merge({ "app" = "custody", "managed-by" = "terraform" }, var.labels)

  # Cloud Run's deterministic URL (https://SERVICE-PROJECT_NUMBER.REGION.run.app).
  # It is known before the service exists, so a config can name it as an
  # OIDC audience without a dependency cycle.
  gateway_url = "https://${var.name}-${data.google_project.this.number}.${var.region}.run.app"

  # Module-owned variables first; var.env may not set any of them (variables.tf).
  # The OTEL_* ones win over the config's [telemetry] section.
  otel_resource_attributes = merge(
    var.otel_resource_attributes,
    # telemetry.googleapis.com routes spans by this attribute and refuses
    # spans without it.
    var.google_trace_export ? { "gcp.project_id" = var.project_id } : {},
  )
  env = merge(
    {
      # Cloud Logging trace links (logging.googleapis.com/trace) name the project.
      GOOGLE_CLOUD_PROJECT = var.project_id
      OTEL_SERVICE_NAME    = coalesce(var.otel_service_name, var.name)
    },
    var.otlp_endpoint == null ? {} : { OTEL_EXPORTER_OTLP_ENDPOINT = var.otlp_endpoint },
    var.otlp_protocol == null ? {} : { OTEL_EXPORTER_OTLP_PROTOCOL = var.otlp_protocol },
    length(local.otel_resource_attributes) == 0 ? {} : {
      OTEL_RESOURCE_ATTRIBUTES = join(",", [for k in sort(keys(local.otel_resource_attributes)) : "${k}=${local.otel_resource_attributes[k]}"])
    },
    var.env,
  )

  vpc_access_enabled = var.vpc_subnetwork != null || var.vpc_connector != null

  # Every sm://PROJECT/SECRET the config names must be a secret the gateway is
  # granted below; otherwise the first session would fail at run time.
  config_secret_refs = toset([
    for m in regexall("sm://([^/\"'#\\s]+)/([^/\"'#\\s]+)", var.config_toml) : "${m[0]}/${m[1]}"
  ])
  granted_secret_refs = setunion(
    [for s in local.upstream_secrets : "${s.project}/${s.secret}"],
    local.signing_key_refs,
  )
  ungranted_secret_refs = setsubtract(local.config_secret_refs, local.granted_secret_refs)

  # recording.signing_key (signs manifests) and identity.signing_key (signs
  # delegation tokens) must each name one of the signing key secrets (created
  # empty by the module, or referenced with signing_key_secret_ids), so the
  # gateway can read them at start and nothing else is mistaken for a key.
  config_signing_keys = [
    for m in regexall("(?m)^\\s*signing_key\\s*=\\s*[\"']([^\"']*)[\"']", var.config_toml) : m[0]
  ]
  foreign_signing_keys = [
    for k in local.config_signing_keys : k
    if !contains(local.signing_key_refs, try(join("/", regex("^sm://([^/#]+)/([^/#]+)(?:#[A-Za-z0-9_-]+)?$", k)), ""))
  ]
  # The body of the [recording] and [identity] tables: the lines after the
  # header, up to the next line that starts with "[" (another table).
  config_tables = {
    for t in ["recording", "identity"] : t => join("\n", [
      for m in regexall("(?m)^[ \\t]*\\[[ \\t]*${t}[ \\t]*\\][^\\n]*((?:\\n[ \\t]*(?:[^ \\t\\[\\n][^\\n]*)?)*)", var.config_toml) : m[0]
    ])
  }
  identity_signing_keys = [
    for m in regexall("(?m)^\\s*signing_key\\s*=\\s*[\"']([^\"']*)[\"']", local.config_tables["identity"]) : m[0]
  ]
  recording_signing_keys = [
    for m in regexall("(?m)^\\s*signing_key\\s*=\\s*[\"']([^\"']*)[\"']", local.config_tables["recording"]) : m[0]
  ]
  # A foreign key is the identity one or, anywhere else, the recording one.
  foreign_identity_signing_keys  = [for k in local.foreign_signing_keys : k if contains(local.identity_signing_keys, k)]
  foreign_recording_signing_keys = [for k in local.foreign_signing_keys : k if !contains(local.identity_signing_keys, k)]

  # Spans: the environment wins over the config file, as in the gateway.
  config_otlp_endpoints = [
    for m in regexall("(?m)^\\s*otlp_endpoint\\s*=\\s*[\"']([^\"']*)[\"']", var.config_toml) : m[0]
  ]
  otlp_endpoint = var.otlp_endpoint != null ? var.otlp_endpoint : try(local.config_otlp_endpoints[0], "")
  # Google's OTLP endpoint checks the caller's IAM (roles/cloudtrace.agent).
  google_otlp_endpoint = can(regex("^https://([a-z0-9-]+\\.)*googleapis\\.com(:[0-9]+)?(/.*)?$", local.otlp_endpoint))

  # recording.endpoint overrides the GCS API root (emulators): on Cloud Run it
  # would send recordings away from the bucket.
  config_store_endpoints = regexall("(?m)^\\s*endpoint\\s*=", var.config_toml)

  # recording.store must be this module's bucket: the gateway can write nowhere else,
  # and a file:// store on Cloud Run would vanish with the instance.
  config_stores = [
    for m in regexall("(?m)^\\s*store\\s*=\\s*[\"']([^\"']*)[\"']", var.config_toml) : m[0]
  ]
  foreign_stores = [
    for s in local.config_stores : s
    if s != "gs://${google_storage_bucket.recordings.name}" && !startswith(s, "gs://${google_storage_bucket.recordings.name}/")
  ]
}

resource "google_cloud_run_v2_service" "gateway" {
  project              = var.project_id
  name                 = var.name
  location             = var.region
  description          = "Custody access gateway"
  ingress              = var.ingress
  invoker_iam_disabled = var.invoker_iam_disabled
  deletion_protection  = var.deletion_protection
  labels               = local.labels

  template {
    service_account                  = google_service_account.gateway.email
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"
    max_instance_request_concurrency = var.concurrency
    # A tunnel is one request; Cloud Run's ceiling is 60 minutes.
    timeout = "3600s"
    labels  = local.labels

    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }

    dynamic "vpc_access" {
      for_each = local.vpc_access_enabled ? [1] : []
      content {
        connector = var.vpc_connector
        egress    = var.vpc_egress

        dynamic "network_interfaces" {
          for_each = var.vpc_subnetwork == null ? [] : [1]
          content {
            network    = var.vpc_network
            subnetwork = var.vpc_subnetwork
            tags       = var.vpc_network_tags
          }
        }
      }
    }

    containers {
      name  = "custody"
      image = var.image

      ports {
        name           = "http1"
        container_port = var.port
      }

      env {
        name  = "CUSTODY_CONFIG"
        value = "/etc/custody/custody.toml"
      }

      dynamic "env" {
        for_each = local.env
        content {
          name  = env.key
          value = env.value
        }
      }

      resources {
        limits = {
          cpu    = var.cpu
          memory = var.memory
        }
        # CPU always allocated: recordings flush and sessions drain after
        # responses are sent.
        cpu_idle          = false
        startup_cpu_boost = true
      }

      # Ready means config loaded, secrets and the recording store reachable.
      startup_probe {
        initial_delay_seconds = 0
        period_seconds        = 2
        timeout_seconds       = 2
        failure_threshold     = 30
        http_get {
          path = "/readyz"
        }
      }

      liveness_probe {
        period_seconds    = 15
        timeout_seconds   = 3
        failure_threshold = 3
        http_get {
          path = "/healthz"
        }
      }

      # The image's CUSTODY_CONFIG default points here too.
      volume_mounts {
        name       = "config"
        mount_path = "/etc/custody"
      }
    }

    volumes {
      name = "config"
      secret {
        secret = google_secret_manager_secret.config.secret_id
        items {
          # Pinned: a config change rolls out as a new revision.
          version = google_secret_manager_secret_version.config.version
          path    = "custody.toml"
        }
      }
    }
  }

  traffic {
    type    = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
    percent = 100
  }

  lifecycle {
    # Cloud Build rolls out new images with `gcloud run deploy`; Terraform owns
    # everything else and must not roll the image back.
    ignore_changes = [
      template[0].containers[0].image,
      client,
      client_version,
    ]

    precondition {
      condition     = var.min_instances <= var.max_instances
      error_message = "min_instances must not exceed max_instances."
    }

    precondition {
      condition     = !(var.vpc_subnetwork != null && var.vpc_connector != null)
      error_message = "Set vpc_subnetwork (Direct VPC egress) or vpc_connector, not both."
    }

    precondition {
      condition     = length(local.ungranted_secret_refs) == 0
      error_message = "config_toml references secrets the gateway is not granted: ${join(", ", sort(tolist(local.ungranted_secret_refs)))}. Add them to upstream_secret_ids."
    }

    precondition {
      condition     = length(local.config_stores) > 0 && length(local.foreign_stores) == 0
      error_message = "config_toml's recording.store must be gs://${google_storage_bucket.recordings.name}/PREFIX (the bucket this module creates)."
    }

    precondition {
      condition     = length(local.config_store_endpoints) == 0
      error_message = "config_toml sets recording.endpoint (a GCS emulator's API root): remove it, recordings go to the module's bucket."
    }

    precondition {
      condition     = length(local.foreign_recording_signing_keys) == 0 && (length(local.recording_signing_keys) > 0 || !var.require_signing_key)
      error_message = "config_toml's recording.signing_key must be sm://PROJECT/SECRET[#VERSION] naming one of the module's signing key secrets (${join(", ", sort(tolist(local.signing_key_refs)))}); set require_signing_key = false to run unsigned."
    }

    # The gateway does not start when identity.signing_key is set but unreadable.
    precondition {
      condition     = length(local.foreign_identity_signing_keys) == 0
      error_message = "config_toml's identity.signing_key (it signs delegation tokens) must be sm://PROJECT/SECRET[#VERSION] naming one of the module's signing key secrets (${join(", ", sort(tolist(local.signing_key_refs)))}): add a key to signing_keys (e.g. \"delegation-key\") or its secret to signing_key_secret_ids."
    }

    precondition {
      condition     = var.google_trace_export == local.google_otlp_endpoint
      error_message = local.google_otlp_endpoint ? "Spans go to ${local.otlp_endpoint}, which needs roles/cloudtrace.agent: set google_trace_export = true." : "google_trace_export is true but the OTLP endpoint (otlp_endpoint, else [telemetry] otlp_endpoint in config_toml) is not Google's: set it to https://telemetry.googleapis.com, or google_trace_export = false."
    }
  }

  depends_on = [
    google_secret_manager_secret_iam_member.config,
    google_secret_manager_secret_iam_member.signing_key,
    google_secret_manager_secret_iam_member.signing_key_existing,
    google_secret_manager_secret_iam_member.upstream,
    google_storage_bucket_iam_member.recordings,
    google_project_iam_member.gateway,
  ]
}
