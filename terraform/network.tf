# SSH targets accept connections from the gateway's egress subnet only, so
# nothing reaches them around Custody. Enabled by ssh_target_tags; needs
# vpc_subnetwork (Direct VPC egress from a subnet dedicated to the gateway).

locals {
  # Decided by the tags alone: the subnetwork may be unknown until apply, and
  # count must be known at plan time.
  ssh_firewall_enabled = length(var.ssh_target_tags) > 0
  subnet_is_link       = can(regex("^(https://|projects/)", var.vpc_subnetwork))
}

data "google_compute_subnetwork" "egress" {
  count = local.ssh_firewall_enabled ? 1 : 0

  self_link = local.subnet_is_link ? var.vpc_subnetwork : null
  name      = local.subnet_is_link ? null : var.vpc_subnetwork
  project   = var.project_id
  region    = var.region

  lifecycle {
    precondition {
      condition     = var.vpc_subnetwork != null
      error_message = "ssh_target_tags needs vpc_subnetwork: the firewall admits the gateway's egress subnet."
    }
  }
}

resource "google_compute_firewall" "ssh_from_gateway" {
  count = local.ssh_firewall_enabled ? 1 : 0

  project     = data.google_compute_subnetwork.egress[0].project
  network     = data.google_compute_subnetwork.egress[0].network
  name        = "${var.name}-allow-ssh-from-gateway"
  description = "SSH to Custody targets from the gateway's egress subnet only."
  direction   = "INGRESS"
  priority    = var.ssh_firewall_priority

  source_ranges = [data.google_compute_subnetwork.egress[0].ip_cidr_range]
  target_tags   = var.ssh_target_tags

  allow {
    protocol = "tcp"
    ports    = [tostring(var.ssh_port)]
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

# Overrides broader allow rules of lower precedence (default-allow-ssh, IAP
# ranges): whoever is not the gateway does not reach the targets' SSH port.
resource "google_compute_firewall" "ssh_deny_others" {
  count = local.ssh_firewall_enabled ? 1 : 0

  project     = data.google_compute_subnetwork.egress[0].project
  network     = data.google_compute_subnetwork.egress[0].network
  name        = "${var.name}-deny-ssh-bypass"
  description = "Deny SSH to Custody targets from anywhere but the gateway."
  direction   = "INGRESS"
  priority    = var.ssh_firewall_priority + 1

  source_ranges = ["0.0.0.0/0"]
  target_tags   = var.ssh_target_tags

  deny {
    protocol = "tcp"
    ports    = [tostring(var.ssh_port)]
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}
