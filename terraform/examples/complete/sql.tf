# pg-prod: Cloud SQL for PostgreSQL with a private IP only. Nothing but the VPC
# reaches it, and in the VPC the gateway is the one client that holds its
# password (in Secret Manager as pg-prod-password).
#
# The `app` user is not created here: its password would land in Terraform
# state. docs/deploy.md creates it from the secret.

resource "google_sql_database_instance" "pg" {
  #checkov:skip=CKV_GCP_6:ssl_mode ENCRYPTED_ONLY refuses every unencrypted connection and Custody verifies the server (tls = "verify-full"); the check only accepts client certificates, and Custody authenticates with the password it fetches from Secret Manager.
  count = var.create_cloud_sql ? 1 : 0

  project             = var.project_id
  name                = "pg-prod"
  region              = var.region
  database_version    = "POSTGRES_18"
  deletion_protection = var.deletion_protection

  settings {
    tier              = var.cloud_sql_tier
    edition           = "ENTERPRISE"
    availability_type = "REGIONAL"
    disk_autoresize   = true
    user_labels       = { app = "custody-example" }

    ip_configuration {
      ipv4_enabled    = false
      private_network = google_compute_network.vpc.id
      # TLS required on every connection; Custody connects with tls = "verify-full".
      ssl_mode = "ENCRYPTED_ONLY"
    }

    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
    }

    # Server-side logging for the audit trail next to Custody's own recordings.
    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }
    database_flags {
      name  = "log_connections"
      value = "on"
    }
    database_flags {
      name  = "log_disconnections"
      value = "on"
    }
    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }
    database_flags {
      name  = "log_min_messages"
      value = "error"
    }
    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }
    database_flags {
      name  = "log_temp_files"
      value = "0"
    }
    database_flags {
      name  = "log_min_duration_statement"
      value = "-1"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl"
    }
    database_flags {
      name  = "log_duration"
      value = "on"
    }
    database_flags {
      name  = "log_hostname"
      value = "on"
    }
    database_flags {
      name  = "cloudsql.enable_pgaudit"
      value = "on"
    }
    # IAM database login: pg-prod-iam logs in as the gateway's service account.
    database_flags {
      name  = "cloudsql.iam_authentication"
      value = "on"
    }
  }

  depends_on = [google_service_networking_connection.private_services]
}

resource "google_sql_database" "app" {
  count = var.create_cloud_sql ? 1 : 0

  project  = var.project_id
  instance = google_sql_database_instance.pg[0].name
  name     = "app"
}

# The gateway's own IAM database user (pg-prod-iam, iam_auth = true): no
# password exists, so none lands in state. Cloud SQL names it after the
# service account's email without ".gserviceaccount.com". Grant it what it
# may do in SQL (GRANT ... TO "custody@PROJECT.iam") as docs/deploy.md shows.
resource "google_sql_user" "gateway" {
  count = var.create_cloud_sql ? 1 : 0

  project  = var.project_id
  instance = google_sql_database_instance.pg[0].name
  name     = trimsuffix(module.custody.service_account_email, ".gserviceaccount.com")
  type     = "CLOUD_IAM_SERVICE_ACCOUNT"
}
