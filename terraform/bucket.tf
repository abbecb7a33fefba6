# Session recordings: write once, read back, never deleted early.

resource "google_storage_bucket" "recordings" {
  #checkov:skip=CKV_GCP_62:Usage logs are optional (recordings_access_log_bucket); Cloud Audit Logs data access logs record who read which recording.
  project       = var.project_id
  name          = var.recordings_bucket_name
  location      = coalesce(var.recordings_location, var.region)
  storage_class = "STANDARD"
  labels        = local.labels

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = var.recordings_versioning
  }

  # Bucket Lock: objects can be neither deleted nor replaced before they are
  # recordings_retention_days old; locking makes the policy permanent.
  retention_policy {
    retention_period = var.recordings_retention_days * 86400
    is_locked        = var.recordings_retention_locked
  }

  soft_delete_policy {
    retention_duration_seconds = var.recordings_soft_delete_days * 86400
  }

  dynamic "lifecycle_rule" {
    for_each = var.recordings_storage_class_transitions
    content {
      condition {
        age = lifecycle_rule.value.age_days
      }
      action {
        type          = "SetStorageClass"
        storage_class = lifecycle_rule.value.storage_class
      }
    }
  }

  dynamic "encryption" {
    for_each = var.recordings_kms_key_name == null ? [] : [var.recordings_kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  dynamic "logging" {
    for_each = var.recordings_access_log_bucket == null ? [] : [var.recordings_access_log_bucket]
    content {
      log_bucket        = logging.value
      log_object_prefix = var.recordings_bucket_name
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.recordings_cmek]
}

# Create, read and list objects (storage.objects.create/get/list): the gateway
# writes segments, manifests, readiness probes, revocations
# (PREFIX/_revocations/MEMBER), reviews and cancel keys (PREFIX/_cancels/) as
# new objects, lists a recording's segments to
# replay or verify it, and lists the revocations at most every 5 s. No delete,
# no overwrite (replacing an object needs storage.objects.delete), no bucket or
# IAM administration.
resource "google_storage_bucket_iam_member" "recordings" {
  for_each = toset([
    "roles/storage.objectCreator",
    "roles/storage.objectViewer",
  ])

  bucket = google_storage_bucket.recordings.name
  role   = each.value
  member = local.gateway_member
}

# CMEK: the project's Cloud Storage service agent encrypts with the key.
data "google_storage_project_service_account" "gcs" {
  count   = var.recordings_kms_key_name == null ? 0 : 1
  project = var.project_id
}

resource "google_kms_crypto_key_iam_member" "recordings_cmek" {
  count = var.recordings_kms_key_name == null ? 0 : 1

  crypto_key_id = var.recordings_kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${data.google_storage_project_service_account.gcs[0].email_address}"
}
