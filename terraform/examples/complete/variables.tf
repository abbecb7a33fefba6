variable "project_id" {
  description = "Project to deploy into."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lowercase letters, digits, hyphens)."
  }
}

variable "region" {
  description = "Region for Cloud Run, Cloud SQL, the subnets and the image repository."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1."
  }
}

variable "image" {
  description = "Gateway image for the first deployment, e.g. us-central1-docker.pkg.dev/PROJECT/custody/custody:COMMIT (cloudbuild.yaml builds and pushes it)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9.-]+(:[0-9]+)?/[^ ]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$", var.image))
    error_message = "image must be a full image reference with a tag or a sha256 digest."
  }
}

variable "invokers" {
  description = "People and groups allowed through Cloud Run IAM (roles/run.invoker), e.g. [\"group:sre@example.com\"]. The deployer service account is added by the example."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.invokers : can(regex("^(user|group|serviceAccount|domain):.+$", m))])
    error_message = "invokers must be IAM members (user:, group:, serviceAccount:, domain:)."
  }
}

variable "create_cloud_sql" {
  description = "Create the pg-prod Cloud SQL instance (private IP only). false keeps the config's host as written."
  type        = bool
  default     = true
}

variable "cloud_sql_tier" {
  description = "Machine tier of the pg-prod instance."
  type        = string
  default     = "db-custom-1-3840"

  validation {
    condition     = can(regex("^db-", var.cloud_sql_tier))
    error_message = "cloud_sql_tier must be a Cloud SQL tier such as db-custom-1-3840."
  }
}

variable "recordings_retention_days" {
  description = "Days a recording is kept before it may be deleted."
  type        = number
  default     = 365

  validation {
    condition     = var.recordings_retention_days >= 1 && var.recordings_retention_days <= 36500
    error_message = "recordings_retention_days must be between 1 and 36500."
  }
}

variable "recordings_retention_locked" {
  description = "Lock the recordings retention policy (irreversible)."
  type        = bool
  default     = false
}

variable "deletion_protection" {
  description = "Protect the Cloud Run service and the Cloud SQL instance from terraform destroy."
  type        = bool
  default     = true
}
