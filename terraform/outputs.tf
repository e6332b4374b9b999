# `terraform output -json orch_config > ~/.config/orch/config.json` points the `orch` CLI at
# this deployment: the object's keys are pipeline/orchestrator/config.py's Settings fields.
output "orch_config" {
  description = "The orch CLI's config file (Settings fields: ids, not full resource paths)."
  value       = local.settings
}

output "sources_bucket" {
  description = "Drop source archives (.zip) here: gs://BUCKET/NAME.zip starts a deployment."
  value       = google_storage_bucket.sources.name
}

output "records_bucket" {
  description = "Bucket of the orchestrator's own records (deployment claims, step results, service locks)."
  value       = google_storage_bucket.records.name
}

output "build_logs_bucket" {
  description = "Bucket the orchestrator's builds write their logs to."
  value       = google_storage_bucket.build_logs.name
}

output "requests_topic" {
  description = "Full name of the topic that takes deploy-request messages."
  value       = google_pubsub_topic.topic["requests"].id
}

output "status_topic" {
  description = "Full name of the topic every step's status events are published to."
  value       = google_pubsub_topic.topic["status"].id
}

output "dead_letter_subscription" {
  description = "Full name of the subscription that keeps events no intake function could take."
  value       = google_pubsub_subscription.dead_letter.id
}

output "repository" {
  description = "Docker repository the deployed services' images are pushed to."
  value       = "${google_artifact_registry_repository.functions.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.functions.repository_id}"
}

output "workflow" {
  description = "Full name of the deploy workflow."
  value       = google_workflows_workflow.deploy.id
}

output "function_urls" {
  description = "URL of each orchestrator function (private: callers need roles/run.invoker)."
  value       = { for key, fn in google_cloudfunctions2_function.function : key => fn.service_config[0].uri }
}

output "intake_triggers" {
  description = "Full names of the Eventarc intake triggers."
  value       = { for key, trigger in google_eventarc_trigger.intake : key => trigger.id }
}

output "service_accounts" {
  description = "Email of each service account the orchestrator created (functions by key, plus workflow, trigger, runtime and build)."
  value = merge(
    { for key, account in google_service_account.function : key => account.email },
    { for role, account in google_service_account.account : role => account.email },
  )
}
