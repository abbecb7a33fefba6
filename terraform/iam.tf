# The gateway's identity and everything it is allowed to do.
#
#   project     roles/logging.logWriter, and roles/cloudtrace.agent only with
#               google_trace_export (spans to telemetry.googleapis.com); nothing else
#   secrets     roles/secretmanager.secretAccessor on each listed secret (secrets.tf):
#               the config, the signing keys (recording and delegation), the
#               upstream credentials
#   bucket      roles/storage.objectCreator + roles/storage.objectViewer (bucket.tf):
#               it can write new recordings and revocations and read and list
#               them back, never delete or overwrite one
#   cloud_sql   roles/cloudsql.client in the project of each cloud_sql_instances
#               entry (connectSettings, generateEphemeralCert), and
#               roles/cloudsql.instanceUser there with cloud_sql_iam_login
#
#   groups      NOT Terraform's to grant: for [identity.google_groups] (group: members
#               of Google users) the gateway's service account needs, once, the
#               Google Workspace / Cloud Identity admin role "Groups Reader" (or a
#               custom admin role with the Groups > Read privilege), assigned in the
#               Admin console (Account > Admin roles > Groups Reader > Assign service
#               accounts) or with the Directory API's roleAssignments; and
#               cloudidentity.googleapis.com enabled (the example does). See
#               docs/deploy.md "Google Groups".
#
# No project-wide Secret Manager or Storage role, no service account user or
# token creator role: the gateway holds no keys and impersonates nobody.

resource "google_service_account" "gateway" {
  project      = var.project_id
  account_id   = var.name
  display_name = "Custody gateway"
  description  = "Runs the Custody access gateway on Cloud Run (managed by Terraform)."
}

locals {
  gateway_member = "serviceAccount:${google_service_account.gateway.email}"

  gateway_project_roles = toset(concat(
    ["roles/logging.logWriter"],
    # telemetry.traces.write, for OTLP export to telemetry.googleapis.com.
    var.google_trace_export ? ["roles/cloudtrace.agent"] : [],
  ))
}

# Cloud SQL's roles are project-level, as Google's connectors document them;
# one grant per project that holds a listed instance.
locals {
  cloud_sql_projects = toset([
    for n in var.cloud_sql_instances : join(":", slice(split(":", n), 0, length(split(":", n)) - 2))
  ])
  cloud_sql_roles = concat(
    ["roles/cloudsql.client"],
    var.cloud_sql_iam_login ? ["roles/cloudsql.instanceUser"] : [],
  )
  cloud_sql_grants = {
    for pair in setproduct(local.cloud_sql_projects, local.cloud_sql_roles) : "${pair[0]} ${pair[1]}" => {
      project = pair[0]
      role    = pair[1]
    }
  }
}

resource "google_project_iam_member" "cloud_sql" {
  for_each = local.cloud_sql_grants

  project = each.value.project
  role    = each.value.role
  member  = local.gateway_member
}

resource "google_project_iam_member" "gateway" {
  for_each = local.gateway_project_roles

  project = var.project_id
  role    = each.value
  member  = local.gateway_member
}

# Cloud Run IAM in front of Custody: only these members get past Google's front
# end with a Google-signed ID token. Optional: with invoker_iam_disabled the
# gateway's own OIDC verification is the only check.
resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = var.invoker_iam_disabled ? toset([]) : toset(var.invokers)

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.gateway.name
  role     = "roles/run.invoker"
  member   = each.value
}
