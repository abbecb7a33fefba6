# A complete Custody deployment: VPC with a dedicated egress subnet, Cloud SQL
# for PostgreSQL on a private IP, the SSH firewall, the gateway on Cloud Run,
# an Artifact Registry repository for its image and a service account for the
# Cloud Build pipelines that go through it.

provider "google" {
  project = var.project_id
  region  = var.region
}

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  name        = "custody"
  bucket_name = "${var.project_id}-custody-recordings"
  gateway_url = "https://${local.name}-${data.google_project.this.number}.${var.region}.run.app"
  pg_host     = var.create_cloud_sql ? google_sql_database_instance.pg[0].private_ip_address : "10.30.0.3"

  # custody.toml is a complete config that `custody config check` validates as
  # it stands; Terraform only substitutes what it learns at apply time.
  config_toml = replace(
    replace(
      replace(
        replace(
          file("${path.module}/custody.toml"),
          "https://custody-123456789012.us-central1.run.app",
          local.gateway_url,
        ),
        "my-project",
        var.project_id,
      ),
      "host = \"10.30.0.3\"",
      "host = \"${local.pg_host}\"",
    ),
    ":us-central1:pg-prod\"",
    ":${var.region}:pg-prod\"",
  )

  apis = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    # group: members of Google users (custody.toml [identity.google_groups]):
    # searchTransitiveGroups. The gateway's service account also needs the
    # Groups Reader admin role, granted once in the Admin console (docs/deploy.md).
    "cloudidentity.googleapis.com",
    "cloudtrace.googleapis.com",
    "compute.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "servicenetworking.googleapis.com",
    "sqladmin.googleapis.com",
    "storage.googleapis.com",
    # OTLP spans (custody.toml [telemetry] otlp_endpoint).
    "telemetry.googleapis.com",
  ])
}

resource "google_project_service" "apis" {
  for_each = local.apis

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# --- upstream credentials -------------------------------------------------------

# Created empty: add the values out of band so they never enter Terraform state
# (docs/deploy.md shows how).
resource "google_secret_manager_secret" "pg_prod_password" {
  project   = var.project_id
  secret_id = "pg-prod-password"

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret" "web_1_key" {
  project   = var.project_id
  secret_id = "web-1-key"

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

# --- the gateway ------------------------------------------------------------------

module "custody" {
  source = "../.."

  project_id = var.project_id
  region     = var.region
  name       = local.name
  image      = var.image

  config_toml = local.config_toml
  upstream_secret_ids = [
    google_secret_manager_secret.pg_prod_password.secret_id,
    google_secret_manager_secret.web_1_key.secret_id,
  ]

  # custody-signing-key ([recording] signing_key) and custody-delegation-key
  # ([identity] signing_key), created empty: both need a version before the
  # gateway starts (docs/deploy.md, "First deployment").
  signing_keys = ["signing-key", "delegation-key"]

  # pg-prod-iam reaches the instance by its connection name with IAM login.
  cloud_sql_instances = var.create_cloud_sql ? [google_sql_database_instance.pg[0].connection_name] : []
  cloud_sql_iam_login = true

  # custody.toml exports spans to https://telemetry.googleapis.com.
  google_trace_export = true

  recordings_bucket_name      = local.bucket_name
  recordings_retention_days   = var.recordings_retention_days
  recordings_retention_locked = var.recordings_retention_locked

  ingress              = "INGRESS_TRAFFIC_ALL"
  invoker_iam_disabled = false
  invokers             = concat(var.invokers, ["serviceAccount:${google_service_account.deployer.email}"])

  vpc_network      = google_compute_network.vpc.id
  vpc_subnetwork   = google_compute_subnetwork.egress.id
  vpc_egress       = "PRIVATE_RANGES_ONLY"
  ssh_target_tags  = ["custody-ssh-target"]
  vpc_network_tags = ["custody-gateway"]

  deletion_protection = var.deletion_protection

  depends_on = [google_project_service.apis]
}

# --- image repository ---------------------------------------------------------------

resource "google_artifact_registry_repository" "custody" {
  #checkov:skip=CKV_GCP_84:The image holds no secrets; Google-managed encryption is enough for a public-source binary. Add kms_key_name where policy demands CMEK.
  project       = var.project_id
  location      = var.region
  repository_id = "custody"
  format        = "DOCKER"
  description   = "Custody gateway images"

  docker_config {
    immutable_tags = true
  }

  depends_on = [google_project_service.apis]
}

# --- the pipelines' identity ----------------------------------------------------------

# Cloud Build runs the migration pipeline (examples/cloudbuild-migration.yaml)
# as this account. It reaches pg-prod only through Custody: run.invoker on the
# service (granted through the module's invokers) plus its place in the
# connection's allow list in custody.toml. It needs no Secret Manager access.
resource "google_service_account" "deployer" {
  project      = var.project_id
  account_id   = "deployer"
  display_name = "Cloud Build deployer (through Custody)"
}

# Cloud Build's metadata server mints a build's ID token only for a
# user-specified service account holding iam.serviceAccounts.getOpenIdToken
# (Google's "Authorize service-to-service access" for Cloud Build): granted
# here on the account itself, which is all it can mint tokens for.
resource "google_service_account_iam_member" "deployer_id_token" {
  service_account_id = google_service_account.deployer.name
  role               = "roles/iam.serviceAccountOpenIdTokenCreator"
  member             = "serviceAccount:${google_service_account.deployer.email}"
}

# A user-specified build service account must be able to write build logs.
resource "google_project_iam_member" "deployer_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.deployer.email}"
}
