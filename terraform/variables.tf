# ---------------------------------------------------------------------------
# Where and what
# ---------------------------------------------------------------------------

variable "project_id" {
  description = "Project that hosts the gateway, its service account, secrets and recordings bucket."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 characters: lowercase letters, digits, hyphens), not a project number or name."
  }
}

variable "region" {
  description = "Cloud Run region, e.g. europe-west1. Also the default location of the recordings bucket."
  type        = string

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1 or europe-west1."
  }
}

variable "name" {
  description = "Name of the Cloud Run service and of the gateway's service account; prefixes the secrets the module creates."
  type        = string
  default     = "custody"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.name))
    error_message = "name must be 6-30 characters: lowercase letters, digits and hyphens, starting with a letter (it is also the service account ID)."
  }
}

variable "image" {
  description = "Container image of the gateway, by tag or (better) digest, e.g. europe-west1-docker.pkg.dev/P/custody/custody@sha256:... Only the first deployment uses it: later revisions are rolled out by Cloud Build (gcloud run deploy), so Terraform ignores image drift."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9.-]+(:[0-9]+)?/[^ ]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$", var.image))
    error_message = "image must be a full image reference with a tag or a sha256 digest."
  }
}

variable "config_toml" {
  description = "The gateway's custody.toml. Stored as a Secret Manager secret and mounted read-only at /etc/custody/custody.toml. It must hold secret references (sm://, env:, file:) only, never secret values, and its recording.store must be this module's bucket."
  type        = string

  validation {
    condition     = length(trimspace(var.config_toml)) > 0
    error_message = "config_toml must not be empty."
  }

  validation {
    # password / private_key / signing_key = "..." must be references, never values.
    condition = alltrue([
      for m in regexall("(?m)^\\s*(?:password|private_key|signing_key)\\s*=\\s*[\"']([^\"']*)[\"']", var.config_toml) :
      can(regex("^(sm://|env:|file:)", m[0]))
    ])
    error_message = "config_toml holds a plain secret: every password, private_key and signing_key must be an sm://PROJECT/SECRET, env:NAME or file:PATH reference."
  }

  validation {
    # Multi-line strings would hide keys from the check above.
    condition     = !strcontains(var.config_toml, "\"\"\"") && !strcontains(var.config_toml, "'''")
    error_message = "config_toml must not use multi-line strings."
  }
}

variable "labels" {
  description = "Labels added to every labelled resource the module creates."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))])
    error_message = "labels: keys must start with a lowercase letter; keys and values may use lowercase letters, digits, '_' and '-' (at most 63 characters)."
  }
}

# ---------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------

variable "upstream_secret_ids" {
  description = "Existing Secret Manager secrets the gateway may read: the upstream passwords and SSH keys the config references with sm://. Each is a secret name in project_id or a full projects/PROJECT/secrets/NAME id. The gateway gets roles/secretmanager.secretAccessor on exactly these secrets, never on the project."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.upstream_secret_ids : can(regex("^(projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/secrets/)?[A-Za-z0-9_-]{1,255}$", s))])
    error_message = "upstream_secret_ids entries must be SECRET or projects/PROJECT/secrets/SECRET."
  }
}

variable "signing_keys" {
  description = "Signing key secrets the module creates, empty, as NAME-KEY (default: NAME-signing-key). Each holds an Ed25519 PKCS#8 PEM private key: the one [recording] signing_key names signs recording manifests, the one [identity] signing_key names signs delegation tokens (add e.g. \"delegation-key\" for NAME-delegation-key; keep the two keys apart). Add the key out of band (custody dev keygen, then gcloud secrets versions add) so key material never enters Terraform state. The gateway reads its keys once at start, so each secret the config names needs a version before the first revision starts (docs/deploy.md)."
  type        = list(string)
  default     = ["signing-key"]

  validation {
    condition     = alltrue([for k in var.signing_keys : can(regex("^[a-z][a-z0-9-]{0,62}$", k))])
    error_message = "signing_keys entries must be lowercase names of letters, digits and hyphens."
  }
}

variable "signing_key_secret_ids" {
  description = "Existing Secret Manager secrets that hold signing keys, for [recording] signing_key or [identity] signing_key (created outside Terraform, e.g. already versioned before the first apply). Each is a secret name in project_id or projects/PROJECT/secrets/NAME; the gateway gets roles/secretmanager.secretAccessor on each."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.signing_key_secret_ids : can(regex("^(projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/secrets/)?[A-Za-z0-9_-]{1,255}$", s))])
    error_message = "signing_key_secret_ids entries must be SECRET or projects/PROJECT/secrets/SECRET."
  }
}

variable "require_signing_key" {
  description = "Refuse a config without [recording] signing_key. Unsigned manifests prove a recording is complete but not that this gateway wrote it; turn this off only for a throwaway deployment."
  type        = bool
  default     = true
}

variable "secret_kms_key_name" {
  description = "Optional Cloud KMS key (projects/P/locations/global/keys/...) that encrypts the secrets this module creates (CMEK). null uses Google-managed keys."
  type        = string
  default     = null

  validation {
    condition     = var.secret_kms_key_name == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", var.secret_kms_key_name))
    error_message = "secret_kms_key_name must be projects/P/locations/L/keyRings/R/cryptoKeys/K."
  }
}

# ---------------------------------------------------------------------------
# Recordings bucket
# ---------------------------------------------------------------------------

variable "recordings_bucket_name" {
  description = "Globally unique name of the bucket the module creates for session recordings; recording.store in the config is gs://THIS_BUCKET/PREFIX."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$", var.recordings_bucket_name)) && !can(regex("^goog|google", var.recordings_bucket_name))
    error_message = "recordings_bucket_name must be 3-63 characters of lowercase letters, digits, '-' and '_' (no dots), and must not start with 'goog' or contain 'google'."
  }
}

variable "recordings_location" {
  description = "Location of the recordings bucket (a region, dual-region or multi-region). null means var.region."
  type        = string
  default     = null

  validation {
    condition     = var.recordings_location == null || can(regex("^[A-Za-z0-9-]+$", var.recordings_location))
    error_message = "recordings_location must be a bucket location such as EU, US, EUR4 or europe-west1."
  }
}

variable "recordings_retention_days" {
  description = "Retention policy: a recording can be neither deleted nor replaced before it is this many days old."
  type        = number
  default     = 365

  validation {
    condition     = var.recordings_retention_days >= 1 && var.recordings_retention_days <= 36500 && floor(var.recordings_retention_days) == var.recordings_retention_days
    error_message = "recordings_retention_days must be a whole number of days between 1 and 36500."
  }
}

variable "recordings_retention_locked" {
  description = "Lock the retention policy (Bucket Lock). IRREVERSIBLE: the policy can then never be shortened or removed, and the bucket cannot be deleted before every object has aged out."
  type        = bool
  default     = false
}

variable "recordings_versioning" {
  description = "Object Versioning on the recordings bucket. Cloud Storage once refused versioning together with a retention policy; if it refuses it for you, set false: the retention policy alone already forbids deleting or replacing a recording early."
  type        = bool
  default     = true
}

variable "recordings_soft_delete_days" {
  description = "Soft delete window for the bucket: objects deleted after their retention stay restorable this many days. 0 disables soft delete; otherwise 7-90."
  type        = number
  default     = 7

  validation {
    condition     = var.recordings_soft_delete_days == 0 || (var.recordings_soft_delete_days >= 7 && var.recordings_soft_delete_days <= 90)
    error_message = "recordings_soft_delete_days must be 0 or between 7 and 90."
  }
}

variable "recordings_storage_class_transitions" {
  description = "Lifecycle rules that move recordings to colder storage classes as they age."
  type = list(object({
    age_days      = number
    storage_class = string
  }))
  default = [
    { age_days = 30, storage_class = "NEARLINE" },
    { age_days = 90, storage_class = "COLDLINE" },
    { age_days = 365, storage_class = "ARCHIVE" },
  ]

  validation {
    condition = alltrue([
      for t in var.recordings_storage_class_transitions :
      contains(["NEARLINE", "COLDLINE", "ARCHIVE"], t.storage_class) && t.age_days >= 1
    ])
    error_message = "Each transition needs age_days >= 1 and storage_class NEARLINE, COLDLINE or ARCHIVE."
  }
}

variable "recordings_kms_key_name" {
  description = "Optional Cloud KMS key that encrypts recordings (CMEK), in the bucket's location. The module grants the project's Cloud Storage service agent encrypt/decrypt on it. null uses Google-managed keys."
  type        = string
  default     = null

  validation {
    condition     = var.recordings_kms_key_name == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", var.recordings_kms_key_name))
    error_message = "recordings_kms_key_name must be projects/P/locations/L/keyRings/R/cryptoKeys/K."
  }
}

variable "recordings_access_log_bucket" {
  description = "Optional bucket that receives usage logs of the recordings bucket. null turns usage logs off (Cloud Audit Logs data access logs are the better record of who read a recording)."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------
# Cloud Run service
# ---------------------------------------------------------------------------

variable "port" {
  description = "Container port; Cloud Run passes it to the gateway as PORT."
  type        = number
  default     = 8080

  validation {
    condition     = var.port >= 1 && var.port <= 65535
    error_message = "port must be between 1 and 65535."
  }
}

variable "cpu" {
  description = "vCPUs per instance. CPU is always allocated (recordings flush after the response), which needs at least 1 vCPU."
  type        = string
  default     = "1"

  validation {
    condition     = contains(["1", "2", "4", "6", "8"], var.cpu)
    error_message = "cpu must be one of 1, 2, 4, 6, 8."
  }
}

variable "memory" {
  description = "Memory per instance, e.g. 512Mi or 1Gi."
  type        = string
  default     = "512Mi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.memory))
    error_message = "memory must look like 512Mi or 2Gi."
  }
}

variable "concurrency" {
  description = "Maximum concurrent requests per instance. Every open tunnel holds one request for its whole life (up to 60 minutes)."
  type        = number
  default     = 100

  validation {
    condition     = var.concurrency >= 1 && var.concurrency <= 1000
    error_message = "concurrency must be between 1 and 1000."
  }
}

variable "min_instances" {
  description = "Minimum instances kept warm (0 allows scale to zero, at the cost of a cold start for the first session)."
  type        = number
  default     = 1

  validation {
    condition     = var.min_instances >= 0 && var.min_instances <= 100
    error_message = "min_instances must be between 0 and 100."
  }
}

variable "max_instances" {
  description = "Maximum instances; bounds cost and the number of upstream connections the gateway can open."
  type        = number
  default     = 10

  validation {
    condition     = var.max_instances >= 1 && var.max_instances <= 1000
    error_message = "max_instances must be between 1 and 1000."
  }
}

variable "ingress" {
  description = "Who may reach the service: INGRESS_TRAFFIC_ALL (internet, with Cloud Run IAM and Custody's own OIDC check), INGRESS_TRAFFIC_INTERNAL_ONLY (VPC and private Cloud Build pools) or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
  type        = string
  default     = "INGRESS_TRAFFIC_ALL"

  validation {
    condition     = contains(["INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"], var.ingress)
    error_message = "ingress must be INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
  }
}

variable "invoker_iam_disabled" {
  description = "false (default): Cloud Run IAM checks a Google-signed ID token before a request reaches Custody, and only var.invokers may call. Cloud Run strips the signature of the token it checks, so clients send it in X-Serverless-Authorization (checked by Cloud Run) and Authorization (passed through untouched, verified by Custody). true: Cloud Run lets every request through and Custody's own OIDC check is the only gate (needed for non-Google issuers)."
  type        = bool
  default     = false
}

variable "invokers" {
  description = "IAM members granted roles/run.invoker on the service when invoker_iam_disabled is false: the people, groups and CI service accounts that use Custody. Which connection each may use is still decided by the allow lists in the config."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.invokers : can(regex("^(user|group|serviceAccount|domain|principal|principalSet):.+$", m))])
    error_message = "invokers must be IAM members (user:, group:, serviceAccount:, domain:, principal:, principalSet:); allUsers and allAuthenticatedUsers are refused, use invoker_iam_disabled instead."
  }
}

variable "vpc_subnetwork" {
  description = "Subnetwork for Direct VPC egress (name or self link). Use a subnet dedicated to the gateway (at least /26): its range is what SSH and database targets allow. null with vpc_connector null means no VPC access."
  type        = string
  default     = null
}

variable "vpc_network" {
  description = "Network of vpc_subnetwork, for Direct VPC egress. null lets Cloud Run infer it from the subnetwork."
  type        = string
  default     = null
}

variable "vpc_network_tags" {
  description = "Network tags put on the gateway's Direct VPC egress traffic, for firewall rules."
  type        = list(string)
  default     = ["custody-gateway"]

  validation {
    condition     = alltrue([for t in var.vpc_network_tags : can(regex("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", t))])
    error_message = "vpc_network_tags must be valid network tags (lowercase letters, digits, hyphens)."
  }
}

variable "vpc_connector" {
  description = "Serverless VPC Access connector (projects/P/locations/R/connectors/NAME) used instead of Direct VPC egress. Leave null when vpc_subnetwork is set."
  type        = string
  default     = null
}

variable "vpc_egress" {
  description = "Which egress goes through the VPC: PRIVATE_RANGES_ONLY (default: private targets through the VPC, Google APIs directly) or ALL_TRAFFIC."
  type        = string
  default     = "PRIVATE_RANGES_ONLY"

  validation {
    condition     = contains(["PRIVATE_RANGES_ONLY", "ALL_TRAFFIC"], var.vpc_egress)
    error_message = "vpc_egress must be PRIVATE_RANGES_ONLY or ALL_TRAFFIC."
  }
}

variable "env" {
  description = "Extra plain environment variables for the gateway (e.g. RUST_LOG, CUSTODY_LOG, OTEL_BSP_SCHEDULE_DELAY, OTEL_EXPORTER_OTLP_TIMEOUT). Never secrets: those belong in Secret Manager and are referenced from the config. The telemetry variables own GOOGLE_CLOUD_PROJECT and OTEL_EXPORTER_OTLP_ENDPOINT / _PROTOCOL, OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.env : !contains(["PORT", "CUSTODY_CONFIG", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"], k)])
    error_message = "env must not set PORT, CUSTODY_CONFIG or K_*: Cloud Run and the module own them."
  }

  validation {
    condition     = alltrue([for k, v in var.env : !contains(["GOOGLE_CLOUD_PROJECT", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"], k)])
    error_message = "env must not set GOOGLE_CLOUD_PROJECT or OTEL_EXPORTER_OTLP_ENDPOINT/_PROTOCOL, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES: use otlp_endpoint, otlp_protocol, otel_service_name and otel_resource_attributes, so the trace IAM follows the endpoint."
  }

  validation {
    # Would send recordings to an emulator instead of the bucket.
    condition     = !contains(keys(var.env), "STORAGE_EMULATOR_HOST")
    error_message = "env must not set STORAGE_EMULATOR_HOST: recordings go to the module's bucket."
  }

  validation {
    condition     = alltrue([for k, v in var.env : !can(regex("(?i)(password|secret|private_key|token)", k))])
    error_message = "env looks like it carries a secret; reference it from the config with sm:// instead."
  }
}

variable "deletion_protection" {
  description = "Refuse terraform destroy of the Cloud Run service."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------
# Telemetry
# ---------------------------------------------------------------------------
# Logs need nothing here: on Cloud Run the gateway writes Cloud Logging JSON to
# stdout, with trace links built from GOOGLE_CLOUD_PROJECT (always set to
# project_id). Spans go over OTLP to the endpoint named here or in the
# config's [telemetry] otlp_endpoint; these variables become the standard
# OTEL_* environment variables, which win over the config file.

variable "otlp_endpoint" {
  description = "OTEL_EXPORTER_OTLP_ENDPOINT: where the gateway sends spans, e.g. https://telemetry.googleapis.com (Google's OTLP endpoint; needs google_trace_export) or a collector's URL. null leaves it to [telemetry] otlp_endpoint in the config (no spans if that is unset too)."
  type        = string
  default     = null

  validation {
    condition     = var.otlp_endpoint == null || can(regex("^https?://[^\\s/]+(/[^\\s]*)?$", var.otlp_endpoint))
    error_message = "otlp_endpoint must be an http:// or https:// URL."
  }
}

variable "otlp_protocol" {
  description = "OTEL_EXPORTER_OTLP_PROTOCOL: http/protobuf or grpc. null leaves it to [telemetry] otlp_protocol (default http/protobuf)."
  type        = string
  default     = null

  validation {
    condition     = var.otlp_protocol == null || contains(["http/protobuf", "grpc"], coalesce(var.otlp_protocol, "http/protobuf"))
    error_message = "otlp_protocol must be http/protobuf or grpc."
  }
}

variable "otel_service_name" {
  description = "OTEL_SERVICE_NAME, the service.name of the gateway's spans; it overrides [telemetry] service_name. null means var.name."
  type        = string
  default     = null

  validation {
    condition     = var.otel_service_name == null || can(regex("^[A-Za-z0-9._-]{1,100}$", coalesce(var.otel_service_name, "x")))
    error_message = "otel_service_name may use letters, digits, '.', '_' and '-' (at most 100)."
  }
}

variable "otel_resource_attributes" {
  description = "Extra OpenTelemetry resource attributes for the gateway's spans (OTEL_RESOURCE_ATTRIBUTES), e.g. { \"deployment.environment\" = \"prod\" }. With google_trace_export the module adds gcp.project_id, which telemetry.googleapis.com needs to route spans."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.otel_resource_attributes : can(regex("^[A-Za-z0-9._-]+$", k)) && can(regex("^[A-Za-z0-9._/:-]*$", v))])
    error_message = "otel_resource_attributes: keys may use letters, digits, '.', '_' and '-'; values also '/' and ':' (no ',', '=' or spaces)."
  }

  validation {
    condition     = !contains(keys(var.otel_resource_attributes), "gcp.project_id")
    error_message = "otel_resource_attributes must not set gcp.project_id: google_trace_export sets it to project_id."
  }
}

variable "google_trace_export" {
  description = "The gateway exports spans to Google's OTLP endpoint (telemetry.googleapis.com) with its own credentials: grants its service account roles/cloudtrace.agent on the project and sets the gcp.project_id resource attribute. Must be true exactly when the effective OTLP endpoint (otlp_endpoint, else the config's [telemetry] otlp_endpoint) is a googleapis.com endpoint. Enable telemetry.googleapis.com in the project."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------
# SSH targets
# ---------------------------------------------------------------------------

variable "ssh_target_tags" {
  description = "Network tags of the SSH targets behind Custody. When set (with vpc_subnetwork), the module adds a firewall rule that lets them accept SSH only from the gateway's egress subnet, and a lower-priority rule denying SSH from anywhere else."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for t in var.ssh_target_tags : can(regex("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", t))])
    error_message = "ssh_target_tags must be valid network tags."
  }
}

variable "ssh_port" {
  description = "TCP port the SSH targets listen on."
  type        = number
  default     = 22

  validation {
    condition     = var.ssh_port >= 1 && var.ssh_port <= 65535
    error_message = "ssh_port must be between 1 and 65535."
  }
}

variable "ssh_firewall_priority" {
  description = "Priority of the rule allowing SSH from the gateway; the deny-everyone-else rule gets this plus one. Keep it below any broader allow rule (lower number wins)."
  type        = number
  default     = 900

  validation {
    condition     = var.ssh_firewall_priority >= 0 && var.ssh_firewall_priority < 65535
    error_message = "ssh_firewall_priority must be between 0 and 65534."
  }
}

variable "cloud_sql_instances" {
  description = "Cloud SQL instance connection names (PROJECT:REGION:INSTANCE) the config's `instance =` connections use. The gateway gets roles/cloudsql.client in each instance's project (connectSettings, generateEphemeralCert), and with cloud_sql_iam_login roles/cloudsql.instanceUser too."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for n in var.cloud_sql_instances : can(regex("^([a-z0-9.-]+\\.[a-z]+:)?[a-z][a-z0-9-]*:[a-z0-9-]+:[a-z0-9-]+$", n))])
    error_message = "cloud_sql_instances must be instance connection names such as my-project:us-central1:prod-db (gcloud sql instances describe INSTANCE --format='value(connectionName)')."
  }
}

variable "cloud_sql_iam_login" {
  description = "The config uses iam_auth = true (Cloud SQL IAM database login as the gateway's service account): also grant roles/cloudsql.instanceUser in each cloud_sql_instances project. The instance needs the cloudsql.iam_authentication flag and a CLOUD_IAM_SERVICE_ACCOUNT user for the gateway (see the complete example)."
  type        = bool
  default     = false
}
