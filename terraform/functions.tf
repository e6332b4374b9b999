# The orchestrator's functions (pipeline.json `functions`), each a private Cloud Run
# function built from pipeline/orchestrator/ with its own entry point and service account.
resource "google_cloudfunctions2_function" "function" {
  for_each = local.functions

  project     = var.project_id
  location    = var.region
  name        = each.value.name
  description = "Serverless deploy orchestrator: ${each.key} (${each.value.signature_type} function ${each.value.entry_point})."

  build_config {
    runtime     = var.function_runtime
    entry_point = each.value.entry_point
    # Built by the builder account into the functions repository, not by the project's
    # default build account into gcf-artifacts: the default account differs between
    # projects created before and after 2024, and may lack these permissions.
    service_account   = google_service_account.account["build"].id # projects/P/serviceAccounts/EMAIL
    docker_repository = google_artifact_registry_repository.functions.id

    source {
      storage_source {
        bucket = google_storage_bucket.code.name
        object = google_storage_bucket_object.orchestrator.name
      }
    }
  }

  service_config {
    service_account_email = google_service_account.function[each.key].email
    timeout_seconds       = each.value.timeout_seconds
    available_memory      = var.function_memory
    min_instance_count    = 0 # scale to zero: nothing is billed while idle
    max_instance_count    = var.function_max_instances
    # Callers come from Workflows and Eventarc over Google's front end; what keeps the
    # functions private is IAM (no allUsers invoker), not the ingress setting.
    ingress_settings               = "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    environment_variables          = local.function_env
  }

  # CloudEvent functions get their events from the Eventarc triggers in triggers.tf (named
  # like local's), so they have no event_trigger here; their entry points are declared
  # CloudEvent functions in main.py (functions_framework.cloud_event).

  depends_on = [
    google_project_service.api,
    # The builder's grants (grants.json): read the code, push the image, write logs.
    google_storage_bucket_iam_member.grant,
    google_project_iam_member.grant,
    google_artifact_registry_repository_iam_member.grant,
  ]
}
