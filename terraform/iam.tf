# Least privilege, one grant per need. terraform/README.md has the table of who gets what
# and why; keep the two in step.

locals {
  # Roles every orchestrator function needs: read and write its records (claims, locks,
  # saved step results) in the records bucket, publish status, and look up workflow
  # executions (a claim or lock whose execution has ended is stale).
  common_records_role = "roles/storage.objectUser"
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
    "build"              = ["build"]
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

resource "google_storage_bucket_iam_member" "function_records" {
  for_each = local.functions

  bucket = google_storage_bucket.records.name
  role   = local.common_records_role
  member = google_service_account.function[each.key].member
}

# The intake functions read the uploaded archive (and, for a deploy request, its current
# generation); no function writes to the sources bucket.
resource "google_storage_bucket_iam_member" "intake_reads_sources" {
  for_each = local.intake_functions

  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer"
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

# build submits builds that run as the builder account; deploy runs services as the runtime
# account; bind-triggers makes triggers that run as the trigger account.
resource "google_service_account_iam_member" "function_act_as" {
  for_each = local.function_act_as_grants

  service_account_id = google_service_account.account[each.value.account].name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.function[each.value.function].member
}

# build reads a failed build's log (its tail goes into the failure event).
resource "google_storage_bucket_iam_member" "build_reads_logs" {
  bucket = google_storage_bucket.build_logs.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.function["build"].member
}

# bind-triggers reads the location of the bucket a storage trigger watches (Eventarc makes
# the trigger in that location). storage.buckets.get alone: the predefined roles that carry
# it at project level also read or list objects, or view the whole project (roles/viewer),
# and the legacy bucket roles cannot be granted on a project.
resource "google_project_iam_custom_role" "bucket_location_reader" {
  project     = var.project_id
  role_id     = "${replace(local.prefix, "-", "_")}_bucketLocationReader"
  title       = "Orchestrator bucket location reader"
  description = "storage.buckets.get only: the orchestrator's bind-triggers function reads a bucket's location to create a storage trigger there."
  permissions = ["storage.buckets.get"]
}

resource "google_project_iam_member" "bind_triggers_reads_bucket_location" {
  project = var.project_id
  role    = google_project_iam_custom_role.bucket_location_reader.name
  member  = google_service_account.function["bind-triggers"].member
}

# ------------------------------------------------------------------ the builder account

# Every build runs as PREFIX-builder: the orchestrator's builds of users' sources (the build
# function submits them with it) and Cloud Run functions' builds of the orchestrator's own
# functions (build_config.service_account). Nothing depends on the project's default build
# account, which differs between projects created before and after 2024.
# https://cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts

# Builds read the uploaded archive (by generation).
resource "google_storage_bucket_iam_member" "builder_reads_sources" {
  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.account["build"].member
}

# The functions' own builds: the orchestrator's zip, and the copy of it that Cloud Run
# functions builds from, in its gcf-v2-sources-NUMBER-REGION bucket. That bucket is created
# by Cloud Run functions with the first function, so the grant is on the project, limited by
# a condition to that bucket and its objects (names projects/_/buckets/B/objects/O).
resource "google_storage_bucket_iam_member" "builder_reads_code" {
  bucket = google_storage_bucket.code.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.account["build"].member
}

resource "google_project_iam_member" "builder_reads_function_sources" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = google_service_account.account["build"].member

  condition {
    title       = "gcf-v2-sources bucket only"
    description = "The bucket Cloud Run functions copies function sources to before building them."
    expression  = "resource.name == \"projects/_/buckets/${local.function_sources_bucket}\" || resource.name.startsWith(\"projects/_/buckets/${local.function_sources_bucket}/\")"
  }
}

# Builds push images: users' services to staging/SERVICE, the functions' own images beside.
resource "google_artifact_registry_repository_iam_member" "builder_writer" {
  project    = var.project_id
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.account["build"].member
}

# The orchestrator's builds write their logs to the build logs bucket: for a user-created
# logs bucket Cloud Build documents Storage Admin for the build's account, granted here on
# that one bucket only
# (https://cloud.google.com/build/docs/securing-builds/store-manage-build-logs).
resource "google_storage_bucket_iam_member" "builder_writes_logs" {
  bucket = google_storage_bucket.build_logs.name
  role   = "roles/storage.admin"
  member = google_service_account.account["build"].member
}

# Cloud Run functions' builds of the orchestrator's functions log to Cloud Logging.
resource "google_project_iam_member" "builder_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.account["build"].member
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
