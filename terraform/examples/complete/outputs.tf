output "gateway_url" {
  description = "Set CUSTODY_GATEWAY to this URL (it is also the config's OIDC audience)."
  value       = local.gateway_url
}

output "service_url" {
  description = "The URL Cloud Run reports for the service."
  value       = module.custody.url
}

output "gateway_service_account" {
  description = "The gateway's service account."
  value       = module.custody.service_account_email
}

output "deployer_service_account" {
  description = "Service account for Cloud Build pipelines that go through Custody."
  value       = google_service_account.deployer.email
}

output "recordings_bucket" {
  description = "Bucket holding the session recordings."
  value       = module.custody.recordings_bucket
}

output "signing_key_secrets" {
  description = "Signing key secrets to add the keys to, recording (signing-key) and delegation (delegation-key): custody dev keygen, gcloud secrets versions add."
  value       = module.custody.signing_key_secret_ids
}

output "image_repository" {
  description = "Artifact Registry path for the gateway image."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.custody.repository_id}"
}

output "pg_prod_private_ip" {
  description = "Private IP of the pg-prod Cloud SQL instance (null when not created)."
  value       = var.create_cloud_sql ? google_sql_database_instance.pg[0].private_ip_address : null
}
