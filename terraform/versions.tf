terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # Argument names checked against the provider's 8.7 schema (README: "Checks").
      version = ">= 7.0, < 9.0"
    }
    # google_project_service_identity (the service agents, created before they are granted)
    # exists only in the beta provider; everything else uses `google`.
    google-beta = {
      source  = "hashicorp/google-beta"
      version = ">= 7.0, < 9.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.4"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = var.labels
}

provider "google-beta" {
  project = var.project_id
  region  = var.region

  default_labels = var.labels
}
