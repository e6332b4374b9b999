# Least privilege, one grant per need. terraform/README.md has the table of who gets what
# and why; keep the two in step.

locals {
  # Roles every orchestrator function needs: read archives and read/write its records
  # under `_orchestrator/` in the sources bucket, publish status, and look up workflow
  # executions (a claim or lock whose execution has ended is stale).
  common_bucket_role  = "roles/storage.objectUser"
  common_status_role  = "roles/pubsub.publisher"
  common_project_role = "roles/workflows.viewer"

  # Project roles of each function, by function key (a unit test keeps the keys equal to
  # pipeline.json's functions). Project level where the resources are created at run time.
  function_project_roles = {
    "on-source-uploaded" = ["roles/workflows.invoker"]
    "on-deploy-request"  = ["roles/workflows.invoker"]
    "build"              = ["roles/cloudbuild.builds.editor"]
    "push"               = []
    "deploy"             = ["roles/run.admin"]
    "bind-triggers"      = ["roles/eventarc.admin", "roles/pubsub.editor", "roles/run.admin"]
  }

  # Which role accounts (service_accounts in pipeline.json) a function may act as.
  function_act_as = {
    "on-source-uploaded" = []
    "on-deploy-request"  = []
    "build"              = []
    "push"               = []
    "deploy"             = ["runtime"]
    "bind-triggers"      = ["trigger"]
  }

  function_project_grants = merge([
    for key, roles in local.function_project_roles : {
      for role in concat(roles, [local.common_project_role]) : "${key} ${role}" => { function = key, role = role }
    }
  ]...)

  function_act_as_grants = merge([
    for key, accounts in local.function_act_as : {
      for account in accounts : "${key} ${account}" => { function = key, account = account }
    }
  ]...)

  # The functions whose Cloud Run services the trigger account delivers events to.
  intake_functions = toset([for trigger in local.triggers : trigger.function])
}

# ------------------------------------------------------------------ the orchestrator's functions

resource "google_project_iam_member" "function" {
  for_each = local.function_project_grants

  project = var.project_id
  role    = each.value.role
  member  = google_service_account.function[each.value.function].member
}

resource "google_storage_bucket_iam_member" "function_sources" {
  for_each = local.functions

  bucket = google_storage_bucket.sources.name
  role   = local.common_bucket_role
  member = google_service_account.function[each.key].member
}

resource "google_pubsub_topic_iam_member" "function_status" {
  for_each = local.functions

  project = var.project_id
  topic   = google_pubsub_topic.topic["status"].name
  role    = local.common_status_role
  member  = google_service_account.function[each.key].member
}

# push copies the built image into the service's path (a cross-repository mount).
resource "google_artifact_registry_repository_iam_member" "push_writer" {
  project    = var.project_id
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.function["push"].member
}

# deploy runs services as the runtime account; bind-triggers makes triggers that run as the
# trigger account.
resource "google_service_account_iam_member" "function_act_as" {
  for_each = local.function_act_as_grants

  service_account_id = google_service_account.account[each.value.account].name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.function[each.value.function].member
}

# build submits builds that run as the configured Cloud Build account.
resource "google_service_account_iam_member" "build_act_as" {
  count = var.cloud_build_service_account == null ? 0 : 1

  service_account_id = "projects/${var.project_id}/serviceAccounts/${var.cloud_build_service_account}"
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.function["build"].member
}

# ------------------------------------------------------------------ the workflow's account

# The workflow calls the step functions with OIDC tokens.
resource "google_cloud_run_v2_service_iam_member" "workflow_invokes_step" {
  for_each = local.step_functions

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.function[each.key].name
  role     = "roles/run.invoker"
  member   = google_service_account.account["workflow"].member
}

# The workflow publishes the final `done` event through the Pub/Sub connector.
resource "google_pubsub_topic_iam_member" "workflow_status" {
  project = var.project_id
  topic   = google_pubsub_topic.topic["status"].name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.account["workflow"].member
}

resource "google_project_iam_member" "workflow_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.account["workflow"].member
}

# ------------------------------------------------------------------ the trigger account

resource "google_project_iam_member" "trigger_receiver" {
  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.account["trigger"].member
}

resource "google_cloud_run_v2_service_iam_member" "trigger_invokes_intake" {
  for_each = local.intake_functions

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.function[each.key].name
  role     = "roles/run.invoker"
  member   = google_service_account.account["trigger"].member
}

# Deployed services are created at run time, and deploy rewrites a service's invoker
# policy from allow_unauthenticated (replacing any per-service grant), so the account
# that delivers their events may invoke every service in the project.
resource "google_project_iam_member" "trigger_invokes_services" {
  project = var.project_id
  role    = "roles/run.invoker"
  member  = google_service_account.account["trigger"].member
}

# ------------------------------------------------------------------ the runtime account

resource "google_project_iam_member" "runtime" {
  for_each = var.runtime_roles

  project = var.project_id
  role    = each.value
  member  = google_service_account.account["runtime"].member
}

# ------------------------------------------------------------------ Google's agents

# Cloud Build reads the uploaded sources and pushes images to the repository.
resource "google_storage_bucket_iam_member" "cloud_build_sources" {
  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer"
  member = local.cloud_build_member
}

resource "google_storage_bucket_iam_member" "cloud_build_code" {
  bucket = google_storage_bucket.code.name
  role   = "roles/storage.objectViewer"
  member = local.cloud_build_member
}

resource "google_artifact_registry_repository_iam_member" "cloud_build_writer" {
  project    = var.project_id
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = local.cloud_build_member
}

resource "google_project_iam_member" "cloud_build_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = local.cloud_build_member
}

# Storage-finalized triggers (ours and those bind-triggers makes on users' buckets) need
# the Cloud Storage service agent to publish to Pub/Sub.
resource "google_project_iam_member" "gcs_publisher" {
  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = local.gcs_service_agent
}

# Pub/Sub mints the OIDC tokens of the trigger account's push deliveries (needed in
# projects created before April 2021; harmless after).
resource "google_service_account_iam_member" "pubsub_token_creator" {
  service_account_id = google_service_account.account["trigger"].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

# Pub/Sub forwards undeliverable messages to the dead-letter topic.
resource "google_pubsub_topic_iam_member" "pubsub_dead_letter_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.topic["dead_letter"].name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}
