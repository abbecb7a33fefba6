# Secret Manager: the gateway's config, its signing keys (recording manifests,
# delegation tokens), and read access to the upstream credentials the config
# references. Access is granted per secret with
# google_secret_manager_secret_iam_member, never on the project.

locals {
  # "NAME" or "projects/PROJECT/secrets/NAME" -> { project, secret }
  upstream_secrets = {
    for s in var.upstream_secret_ids : s => {
      project = length(split("/", s)) == 4 ? split("/", s)[1] : var.project_id
      secret  = element(split("/", s), length(split("/", s)) - 1)
    }
  }
  existing_signing_keys = {
    for s in var.signing_key_secret_ids : s => {
      project = length(split("/", s)) == 4 ? split("/", s)[1] : var.project_id
      secret  = element(split("/", s), length(split("/", s)) - 1)
    }
  }

  # PROJECT/SECRET of every signing key secret the gateway may read: what
  # recording.signing_key and identity.signing_key = "sm://PROJECT/SECRET" may name.
  signing_key_refs = toset(concat(
    [for k in var.signing_keys : "${var.project_id}/${var.name}-${k}"],
    [for s in local.existing_signing_keys : "${s.project}/${s.secret}"],
  ))
}

# --- config ------------------------------------------------------------------

# The config holds references (sm://, env:, file:), never secret values, so its
# text in Terraform state reveals no credential. It is a secret so it can be
# mounted as a file and versioned with the revisions that use it.
resource "google_secret_manager_secret" "config" {
  project   = var.project_id
  secret_id = "${var.name}-config"
  labels    = local.labels

  replication {
    auto {
      dynamic "customer_managed_encryption" {
        for_each = var.secret_kms_key_name == null ? [] : [var.secret_kms_key_name]
        content {
          kms_key_name = customer_managed_encryption.value
        }
      }
    }
  }
}

resource "google_secret_manager_secret_version" "config" {
  secret      = google_secret_manager_secret.config.id
  secret_data = var.config_toml
}

resource "google_secret_manager_secret_iam_member" "config" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.config.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.gateway_member
}

# --- signing keys --------------------------------------------------------------

# Ed25519 keys (PKCS#8 PEM): [recording] signing_key signs each recording's
# manifest, [identity] signing_key signs delegation tokens (a separate entry,
# e.g. "delegation-key"). Created empty: add the key material out of band, so
# it never enters Terraform state:
#   custody dev keygen --out key.pem > key.pub.pem
#   gcloud secrets versions add NAME-signing-key --data-file=key.pem && shred -u key.pem
# The gateway reads its keys once, when an instance starts: each secret the
# config names needs a version before the first revision starts, and a new
# version only reaches instances started after it. Pin sm://PROJECT/SECRET#VERSION
# in the config to roll a new key out as a new revision (docs/deploy.md,
# "Signing key" and "Delegation and revocation").
resource "google_secret_manager_secret" "signing_key" {
  for_each = toset(var.signing_keys)

  project   = var.project_id
  secret_id = "${var.name}-${each.value}"
  labels    = local.labels

  replication {
    auto {
      dynamic "customer_managed_encryption" {
        for_each = var.secret_kms_key_name == null ? [] : [var.secret_kms_key_name]
        content {
          kms_key_name = customer_managed_encryption.value
        }
      }
    }
  }
}

resource "google_secret_manager_secret_iam_member" "signing_key" {
  for_each = google_secret_manager_secret.signing_key

  project   = var.project_id
  secret_id = each.value.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.gateway_member
}

# Signing keys kept in secrets made outside Terraform (signing_key_secret_ids).
resource "google_secret_manager_secret_iam_member" "signing_key_existing" {
  for_each = local.existing_signing_keys

  project   = each.value.project
  secret_id = each.value.secret
  role      = "roles/secretmanager.secretAccessor"
  member    = local.gateway_member
}

# --- upstream credentials --------------------------------------------------------

resource "google_secret_manager_secret_iam_member" "upstream" {
  for_each = local.upstream_secrets

  project   = each.value.project
  secret_id = each.value.secret
  role      = "roles/secretmanager.secretAccessor"
  member    = local.gateway_member
}
