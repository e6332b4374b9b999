# Users drop source archives here (any .zip; the reserved `_orchestrator/` prefix, where
# earlier versions kept their records, stays ignored). The orchestrator only reads it: its
# records live in the records bucket.
resource "google_storage_bucket" "sources" {
  name     = local.sources_bucket
  project  = var.project_id
  location = upper(var.region)

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !var.deletion_protection

  # A re-uploaded archive keeps its predecessor as a noncurrent version (a deployment id is
  # derived from the generation, so the old one stays readable) until the lifecycle rule
  # deletes it.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.source_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  # Versioning already keeps replaced archives; soft delete on top would bill them twice.
  soft_delete_policy {
    retention_duration_seconds = 0
  }

  depends_on = [google_project_service.api]
}

# The orchestrator's own code, zipped from pipeline/ as is (main.py and requirements.txt at
# its root, the orchestrator package beside them), for Cloud Run functions to build from.
resource "google_storage_bucket" "code" {
  name     = local.code_bucket
  project  = var.project_id
  location = upper(var.region)

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !var.deletion_protection

  # No lifecycle rule: Cloud Run functions rebuild from this source when they apply runtime
  # security updates. Terraform replaces the object when the code changes, so old ones go.
  soft_delete_policy {
    retention_duration_seconds = 0
  }

  depends_on = [google_project_service.api]
}

data "archive_file" "orchestrator" {
  type        = "zip"
  source_dir  = "${path.module}/../pipeline"
  output_path = "${path.module}/.build/orchestrator.zip"
  excludes    = ["__pycache__", "__pycache__/**", "**/__pycache__", "**/__pycache__/**", "**/*.pyc"]
}

resource "google_storage_bucket_object" "orchestrator" {
  # The md5 in the name makes every change of pipeline/ a new object, and so a new
  # build and revision of each function.
  name   = "orchestrator-${data.archive_file.orchestrator.output_md5}.zip"
  bucket = google_storage_bucket.code.name
  source = data.archive_file.orchestrator.output_path
}

# The orchestrator's own records: deployment claims, saved step results, service locks and
# trigger locations. A bucket of their own, so writing them never fires the intake trigger
# on the sources bucket.
resource "google_storage_bucket" "records" {
  name     = local.records_bucket
  project  = var.project_id
  location = upper(var.region)

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !var.deletion_protection

  # A finished deployment's records (claim, step results) go after record_retention_days.
  # Only deployments/ matches: a service's lock (locks/) and where its triggers live
  # (services/) are read by its next deployment, however late that comes.
  lifecycle_rule {
    condition {
      age            = var.record_retention_days
      matches_prefix = local.deployment_record_prefixes
    }
    action {
      type = "Delete"
    }
  }

  soft_delete_policy {
    retention_duration_seconds = 0
  }

  depends_on = [google_project_service.api]
}

# Where the orchestrator's builds write their logs (Cloud Build refuses a build with a
# user-specified service account that would log to the default logs bucket), so the build
# step can read a failed build's log tail with its own account.
# No retention policy (a locked minimum age): Cloud Build may then fail to write logs
# (https://cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts);
# a lifecycle rule deletes them instead.
resource "google_storage_bucket" "build_logs" {
  name     = local.logs_bucket
  project  = var.project_id
  location = upper(var.region)

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !var.deletion_protection

  lifecycle_rule {
    condition {
      age = var.build_log_retention_days
    }
    action {
      type = "Delete"
    }
  }

  soft_delete_policy {
    retention_duration_seconds = 0
  }

  depends_on = [google_project_service.api]
}
