terraform {
  # `check` blocks, `strcontains` and the custom conditions below need 1.5.
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.8 is the first 6.x release with `invoker_iam_disabled` on
      # google_cloud_run_v2_service; stay below 7.0 until it is tested.
      version = "~> 6.8"
    }
  }
}
