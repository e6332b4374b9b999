locals {
  # The one list of names shared with `orch local up` (orch/provision.py): every
  # topic, function, trigger and service account below is derived from it.
  pipeline = jsondecode(file("${path.module}/../pipeline/orchestrator/pipeline.json"))

  prefix         = coalesce(var.name_prefix, local.pipeline.name_prefix)
  sources_bucket = "${var.project_id}${local.pipeline.sources_bucket_suffix}"
  records_bucket = "${var.project_id}${local.pipeline.records_bucket_suffix}"
  logs_bucket    = "${var.project_id}${local.pipeline.build_logs_bucket_suffix}"
  code_bucket    = "${var.project_id}-${local.prefix}-orchestrator-code"
  project_number = data.google_project.this.number

  # topic key (requests, status, dead_letter) -> topic id
  topics = local.pipeline.topics

  # function key -> its settings; every function runs as its own service account named
  # like the function (orch-build).
  functions = {
    for key, fn in local.pipeline.functions : key => {
      name            = "${local.prefix}-${key}"
      entry_point     = fn.entry_point
      signature_type  = fn.signature_type
      timeout_seconds = fn.timeout_seconds
      workflow_env    = lookup(fn, "workflow_env", null)
    }
  }

  # The step functions the workflow calls (those with a workflow_env URL variable).
  step_functions = { for key, fn in local.functions : key => fn if fn.workflow_env != null }

  # trigger key -> the intake trigger: an Eventarc trigger named PREFIX-KEY that delivers
  # event_type on the bucket or topic named by `on` to the function's Cloud Run service.
  triggers = {
    for key, trigger in local.pipeline.triggers : key => {
      name       = "${local.prefix}-${key}"
      function   = trigger.function
      event_type = trigger.event_type
      on         = trigger.on
    }
  }

  # What a trigger's `on` names in pipeline.json: a bucket (by name) or a topic (by its key
  # in `topics`).
  trigger_targets = {
    sources_bucket = { bucket = local.sources_bucket, topic = null }
    requests_topic = { bucket = null, topic = "requests" }
  }

  # role of an account (workflow, trigger, runtime) -> its account id (orch-workflow).
  service_accounts = { for role, name in local.pipeline.service_accounts : role => "${local.prefix}-${name}" }

  # The orchestrator's settings (pipeline/orchestrator/config.py Settings: ids, not full paths).
  # The functions get them as environment variables; `orch` reads them as its config file.
  settings = {
    project                 = var.project_id
    region                  = var.region
    prefix                  = local.prefix
    sources_bucket          = local.sources_bucket
    records_bucket          = google_storage_bucket.records.name
    build_logs_bucket       = google_storage_bucket.build_logs.name
    requests_topic          = local.topics.requests
    status_topic            = local.topics.status
    dead_letter_topic       = local.topics.dead_letter
    repository              = local.pipeline.repository
    workflow                = local.pipeline.workflow
    runtime_service_account = google_service_account.account["runtime"].email
    trigger_service_account = google_service_account.account["trigger"].email
    build_service_account   = google_service_account.account["build"].email
  }

  # Settings field -> environment variable (pipeline/orchestrator/config.py ENV_VARS; a unit test
  # keeps the two equal).
  env_vars = {
    project                 = "GOOGLE_CLOUD_PROJECT"
    region                  = "ORCH_REGION"
    prefix                  = "ORCH_PREFIX"
    sources_bucket          = "ORCH_SOURCES_BUCKET"
    records_bucket          = "ORCH_RECORDS_BUCKET"
    build_logs_bucket       = "ORCH_BUILD_LOGS_BUCKET"
    requests_topic          = "ORCH_REQUESTS_TOPIC"
    status_topic            = "ORCH_STATUS_TOPIC"
    dead_letter_topic       = "ORCH_DEAD_LETTER_TOPIC"
    repository              = "ORCH_REPOSITORY"
    workflow                = "ORCH_WORKFLOW"
    runtime_service_account = "ORCH_RUNTIME_SERVICE_ACCOUNT"
    trigger_service_account = "ORCH_TRIGGER_SERVICE_ACCOUNT"
    build_service_account   = "ORCH_BUILD_SERVICE_ACCOUNT"
  }

  function_env = { for field, value in local.settings : local.env_vars[field] => value }

  # Where a deployment's records (claim, step results) live in the records bucket: the
  # lifecycle rule deletes these and nothing else. Both spellings, with and without the
  # reserved prefix that named the records when they shared the sources bucket.
  deployment_record_prefixes = distinct(["deployments/", "${local.pipeline.reserved_prefix}deployments/"])

  # Google-managed service agents this configuration grants roles to, or whose existence
  # Eventarc checks when a trigger is created. Enabling an API does not always create its
  # agent: google_project_service_identity does, and every grant names the agent through it,
  # so it exists before it is granted. (Cloud Storage's agent is created by the data source
  # below, which reads it with the API call that creates it.)
  service_agents = {
    pubsub   = "pubsub.googleapis.com"
    eventarc = "eventarc.googleapis.com"
  }
  gcs_service_agent    = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
  pubsub_service_agent = google_project_service_identity.agent["pubsub"].member

  # Cloud Run functions copies each function's source archive here and builds from the copy,
  # so the build account reads it (https://cloud.google.com/run/docs/configuring/services/build-service-account).
  function_sources_bucket = "gcf-v2-sources-${local.project_number}-${var.region}"
}

data "google_project" "this" {
  project_id = var.project_id

  depends_on = [google_project_service.api]
}

data "google_storage_project_service_account" "gcs" {
  project = var.project_id

  depends_on = [google_project_service.api]
}
