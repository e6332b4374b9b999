# One service account per orchestrator function (orch-build, ...), named like the function.
resource "google_service_account" "function" {
  for_each = local.functions

  project      = var.project_id
  account_id   = each.value.name
  display_name = "Orchestrator function ${each.key}"
  description  = "Runs the ${each.value.name} function of the serverless deploy orchestrator."

  lifecycle {
    precondition {
      condition     = length(each.value.name) >= 6 && length(each.value.name) <= 30
      error_message = "Service account id ${each.value.name} must be 6 to 30 characters: shorten name_prefix."
    }
  }

  depends_on = [google_project_service.api]
}

# The workflow's, the triggers', the deployed services' and the builds' accounts
# (orch-workflow, orch-trigger, orch-runtime, orch-builder).
resource "google_service_account" "account" {
  for_each = local.service_accounts

  project      = var.project_id
  account_id   = each.value
  display_name = "Orchestrator ${each.key}"
  description = lookup({
    workflow = "Runs the deploy workflow: calls the step functions, publishes status."
    trigger  = "Identity of every Eventarc trigger: delivers events to the intake functions and to deployed services."
    runtime  = "Runs the services the orchestrator deploys."
    build    = "Runs the orchestrator's Cloud Builds: reads sources, pushes images, writes build logs."
  }, each.key, "Serverless deploy orchestrator: ${each.key}.")

  lifecycle {
    precondition {
      condition     = length(each.value) >= 6 && length(each.value) <= 30
      error_message = "Service account id ${each.value} must be 6 to 30 characters: change name_prefix."
    }
    precondition {
      condition     = !contains([for fn in local.functions : fn.name], each.value)
      error_message = "Service account ${each.value} would share its id with a function's account."
    }
  }

  depends_on = [google_project_service.api]
}

# The service agents granted roles in iam.tf (and Eventarc's, which must exist before a
# trigger is created), created here so that no grant names an account that does not exist
# yet. Beta-only resource; its `member` is `serviceAccount:EMAIL`.
resource "google_project_service_identity" "agent" {
  provider = google-beta
  for_each = local.service_agents

  project = var.project_id
  service = each.value

  depends_on = [google_project_service.api]
}
