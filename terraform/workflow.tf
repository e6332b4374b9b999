# The `deploy` workflow: the same workflows/deploy.yaml that localcloud runs. The step
# functions' URLs and the status topic reach it as user environment variables
# (sys.get_env("BUILD_URL"), ...).
resource "google_workflows_workflow" "deploy" {
  project         = var.project_id
  region          = var.region
  name            = local.pipeline.workflow
  description     = "Serverless deploy orchestrator: build, push, deploy, bind triggers, publish status."
  service_account = google_service_account.account["workflow"].id
  source_contents = file("${path.module}/../${local.pipeline.workflow_file}")
  call_log_level  = "LOG_ERRORS_ONLY"

  deletion_protection = var.deletion_protection

  user_env_vars = merge(
    { for key, fn in local.step_functions : fn.workflow_env => google_cloudfunctions2_function.function[key].service_config[0].uri },
    { STATUS_TOPIC = google_pubsub_topic.topic["status"].id },
  )

  depends_on = [
    google_project_service.api,
    # The workflow account's grants (grants.json): invoke the steps, publish, log.
    google_cloud_run_v2_service_iam_member.grant,
    google_pubsub_topic_iam_member.grant,
    google_project_iam_member.grant,
  ]
}
