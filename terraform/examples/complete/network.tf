# VPC: a subnet dedicated to the gateway's Direct VPC egress (its range is what
# the targets admit), a subnet for the SSH targets, and private services access
# for Cloud SQL.

resource "google_compute_network" "vpc" {
  #checkov:skip=CKV2_GCP_18:The network's firewall rules (SSH from the gateway's egress subnet only, deny SSH from elsewhere) are created by the module through a subnetwork lookup that checkov's graph does not follow; the test suite checks them.
  project                 = var.project_id
  name                    = "custody-vpc"
  auto_create_subnetworks = false

  depends_on = [google_project_service.apis]
}

# Only Custody's Cloud Run instances take addresses from this range.
resource "google_compute_subnetwork" "egress" {
  project                  = var.project_id
  name                     = "custody-egress"
  region                   = var.region
  network                  = google_compute_network.vpc.id
  ip_cidr_range            = "10.20.8.0/24"
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_5_SEC"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# The SSH targets (e.g. web-1 at 10.20.0.7), tagged custody-ssh-target.
resource "google_compute_subnetwork" "targets" {
  project                  = var.project_id
  name                     = "custody-targets"
  region                   = var.region
  network                  = google_compute_network.vpc.id
  ip_cidr_range            = "10.20.0.0/24"
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_5_SEC"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Private services access: Cloud SQL gets an address from 10.30.0.0/20.
resource "google_compute_global_address" "private_services" {
  count = var.create_cloud_sql ? 1 : 0

  project       = var.project_id
  name          = "custody-private-services"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  address       = "10.30.0.0"
  prefix_length = 20
  network       = google_compute_network.vpc.id
}

resource "google_service_networking_connection" "private_services" {
  count = var.create_cloud_sql ? 1 : 0

  network                 = google_compute_network.vpc.id
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.private_services[0].name]
}
