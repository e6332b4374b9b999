# Least privilege, one grant per need. Every grant is data in
# pipeline/orchestrator/grants.json, the file `orch local up` applies to localcloud too
# (orch/provision.py); terraform/README.md's table is rendered from it
# (`python -m orch.grants`). Each target kind has one *_iam_member resource, for_each over
# the file's grants of that kind, keyed `WHO ROLE ON` (function:build
# roles/cloudbuild.builds.editor project). Only var.runtime_roles is not in the file.

# What the file says, as data only (no resource is read here, so a unit test evaluates this
# block with `terraform console` offline and compares it with orch/grants.py's reading).
locals {
  grants_file = jsondecode(file("${path.module}/../pipeline/orchestrator/grants.json"))

  # Each who x on pair of each grant, `function:*` being every function of pipeline.json.
  iam_grants = merge([
    for grant in local.grants_file.grants : {
      for pair in setproduct(
        flatten([
          for who in grant.who : who == "function:*" ? [for key in keys(local.pipeline.functions) : "function:${key}"] : [who]
        ]),
        grant.on,
        ) : "${pair[0]} ${grant.role} ${pair[1]}" => {
        who       = pair[0]
        role      = grant.role
        kind      = split(":", pair[1])[0]
        target    = try(split(":", pair[1])[1], null)
        condition = try(grant.condition, null)
      }
    }
  ]...)
}

# What the file's names stand for here.
locals {
  grant_members = merge(
    { for key, account in google_service_account.function : "function:${key}" => account.member },
    { for key, account in google_service_account.account : "account:${key}" => account.member },
    {
      "agent:pubsub"  = local.pubsub_service_agent
      "agent:storage" = local.gcs_service_agent
    },
  )

  grant_roles = { for key, role in google_project_iam_custom_role.custom : "custom:${key}" => role.name }

  grant_buckets = {
    sources    = google_storage_bucket.sources.name
    records    = google_storage_bucket.records.name
    build_logs = google_storage_bucket.build_logs.name
    code       = google_storage_bucket.code.name
  }

  grants_on = { for kind in ["project", "bucket", "topic", "repository", "account", "service", "subscription"] : kind => { for key, grant in local.iam_grants : key => grant if grant.kind == kind } }
}

resource "google_project_iam_custom_role" "custom" {
  for_each = local.grants_file.custom_roles

  project     = var.project_id
  role_id     = "${replace(local.prefix, "-", "_")}_${each.key}"
  title       = each.value.title
  description = each.value.description
  permissions = each.value.permissions
}

resource "google_project_iam_member" "grant" {
  for_each = local.grants_on.project

  project = var.project_id
  role    = lookup(local.grant_roles, each.value.role, each.value.role)
  member  = local.grant_members[each.value.who]

  dynamic "condition" {
    for_each = each.value.condition == null ? [] : [each.value.condition]
    content {
      title       = condition.value.title
      description = condition.value.description
      expression  = replace(condition.value.expression, "{function_sources_bucket}", local.function_sources_bucket)
    }
  }
}

resource "google_storage_bucket_iam_member" "grant" {
  for_each = local.grants_on.bucket

  bucket = local.grant_buckets[each.value.target]
  role   = lookup(local.grant_roles, each.value.role, each.value.role)
  member = local.grant_members[each.value.who]
}

resource "google_pubsub_topic_iam_member" "grant" {
  for_each = local.grants_on.topic

  project = var.project_id
  topic   = google_pubsub_topic.topic[each.value.target].name
  role    = lookup(local.grant_roles, each.value.role, each.value.role)
  member  = local.grant_members[each.value.who]
}

resource "google_artifact_registry_repository_iam_member" "grant" {
  for_each = local.grants_on.repository

  project    = var.project_id
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = lookup(local.grant_roles, each.value.role, each.value.role)
  member     = local.grant_members[each.value.who]
}

# roles/iam.serviceAccountUser here is acting as the account (iam.serviceAccounts.actAs).
resource "google_service_account_iam_member" "grant" {
  for_each = local.grants_on.account

  service_account_id = google_service_account.account[each.value.target].name
  role               = lookup(local.grant_roles, each.value.role, each.value.role)
  member             = local.grant_members[each.value.who]
}

resource "google_cloud_run_v2_service_iam_member" "grant" {
  for_each = local.grants_on.service

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.function[each.value.target].name
  role     = lookup(local.grant_roles, each.value.role, each.value.role)
  member   = local.grant_members[each.value.who]
}

# The subscription Eventarc creates for an intake trigger (see triggers.tf).
resource "google_pubsub_subscription_iam_member" "grant" {
  for_each = local.grants_on.subscription

  project      = var.project_id
  subscription = google_eventarc_trigger.intake[each.value.target].transport[0].pubsub[0].subscription
  role         = lookup(local.grant_roles, each.value.role, each.value.role)
  member       = local.grant_members[each.value.who]
}

# The runtime account's roles are the user's choice (var.runtime_roles), not the pipeline's.
resource "google_project_iam_member" "runtime" {
  for_each = var.runtime_roles

  project = var.project_id
  role    = each.value
  member  = google_service_account.account["runtime"].member
}
