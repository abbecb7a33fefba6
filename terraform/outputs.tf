output "url" {
  description = "The service's URL as Cloud Run reports it."
  value       = google_cloud_run_v2_service.gateway.uri
}

output "gateway_url" {
  description = "Deterministic URL (https://NAME-PROJECT_NUMBER.REGION.run.app): use it as CUSTODY_GATEWAY and as the OIDC audience in the config."
  value       = local.gateway_url
}

output "service_name" {
  description = "Cloud Run service name (for gcloud run deploy)."
  value       = google_cloud_run_v2_service.gateway.name
}

output "service_account_email" {
  description = "The gateway's service account."
  value       = google_service_account.gateway.email
}

output "recordings_bucket" {
  description = "Name of the recordings bucket."
  value       = google_storage_bucket.recordings.name
}

output "recordings_store" {
  description = "recording.store value for the config (gs://BUCKET/recordings)."
  value       = "gs://${google_storage_bucket.recordings.name}/recordings"
}

output "config_secret_id" {
  description = "Secret Manager secret holding custody.toml."
  value       = google_secret_manager_secret.config.id
}

output "signing_key_secret_ids" {
  description = "Signing key secrets the module created, by key name; add their versions out of band (custody dev keygen, gcloud secrets versions add)."
  value       = { for k, s in google_secret_manager_secret.signing_key : k => s.id }
}

output "signing_key_references" {
  description = "The values recording.signing_key and identity.signing_key may take: sm://PROJECT/SECRET for every signing key secret the gateway can read (append #VERSION to pin one)."
  value       = [for r in sort(tolist(local.signing_key_refs)) : "sm://${r}"]
}

output "trace_export" {
  description = "Where the gateway's spans go (the OTLP endpoint it resolves: otlp_endpoint, else the config's [telemetry] otlp_endpoint; empty: no span export) and whether it holds roles/cloudtrace.agent for Google's endpoint."
  value = {
    otlp_endpoint       = local.otlp_endpoint
    google_trace_export = var.google_trace_export
  }
}
