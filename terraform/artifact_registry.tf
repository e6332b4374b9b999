# The Docker repository `functions`: builds push to functions/staging/SERVICE, `push`
# publishes the image under functions/SERVICE, Cloud Run runs it by digest. The
# orchestrator's own functions are built into it too (build_config.docker_repository, in
# packages Cloud Run functions names after the project, region and function); the newest
# versions of each package, which they run, are always kept.
resource "google_artifact_registry_repository" "functions" {
  project       = var.project_id
  location      = var.region
  repository_id = local.pipeline.repository
  format        = "DOCKER"
  description   = "Images built by the serverless deploy orchestrator."

  cleanup_policy_dry_run = false

  # KEEP wins over DELETE: the newest versions of every image (rollback targets) and the
  # `latest` tags stay; everything else older than image_retention_days goes, and staging
  # images (already published under the service's path) go after a day.
  cleanup_policies {
    id     = "keep-most-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.keep_image_versions
    }
  }

  cleanup_policies {
    id     = "keep-latest-tag"
    action = "KEEP"
    condition {
      tag_state    = "TAGGED"
      tag_prefixes = ["latest"]
    }
  }

  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "${var.image_retention_days * 86400}s"
    }
  }

  cleanup_policies {
    id     = "delete-staging"
    action = "DELETE"
    # The package of a staging image is `staging/SERVICE`: the slash keeps this rule off
    # the published images of services whose names merely start with "staging".
    condition {
      tag_state             = "ANY"
      package_name_prefixes = ["${trimsuffix(local.pipeline.staging_image_prefix, "/")}/"]
      older_than            = "86400s"
    }
  }

  depends_on = [google_project_service.api]
}
