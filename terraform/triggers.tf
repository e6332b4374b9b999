# The two intake triggers (pipeline.json `triggers`): Cloud Storage object finalized in the
# sources bucket -> on-source-uploaded, Pub/Sub message published on deploy-requests ->
# on-deploy-request. They are named like local's (orch-source-uploaded) and run as the
# trigger account, which signs each delivery with an OIDC token for the private function.
resource "google_eventarc_trigger" "intake" {
  for_each = local.triggers

  project         = var.project_id
  location        = var.region
  name            = each.value.name
  service_account = google_service_account.account["trigger"].email

  matching_criteria {
    attribute = "type"
    value     = each.value.event_type
  }

  dynamic "matching_criteria" {
    for_each = local.trigger_targets[each.value.on].bucket == null ? [] : [local.trigger_targets[each.value.on].bucket]
    content {
      attribute = "bucket"
      value     = matching_criteria.value
    }
  }

  dynamic "transport" {
    for_each = local.trigger_targets[each.value.on].topic == null ? [] : [local.trigger_targets[each.value.on].topic]
    content {
      pubsub {
        topic = google_pubsub_topic.topic[transport.value].id
      }
    }
  }

  destination {
    cloud_run_service {
      service = google_cloudfunctions2_function.function[each.value.function].name
      region  = var.region
    }
  }

  depends_on = [
    google_storage_bucket.sources,         # matched by name, so not an implicit dependency
    google_project_service_identity.agent, # Eventarc's agent checks the bucket, Pub/Sub's delivers
    # The trigger account's and the Cloud Storage agent's grants (grants.json).
    google_project_iam_member.grant,
    google_cloud_run_v2_service_iam_member.grant,
    google_pubsub_topic.topic,
  ]
}

# Retry and dead-letter for the intake: Eventarc delivers through a Pub/Sub push
# subscription it creates and owns (transport.pubsub.subscription), which redelivers with
# backoff until the function acknowledges (2xx). The provider has no argument for that
# subscription's dead-letter policy, so it is set the way Google's Eventarc docs describe:
# `gcloud pubsub subscriptions update`. After max_delivery_attempts the event goes to the
# dead-letter topic, where the deploy-dead-letter-sub subscription keeps it. Pub/Sub's agent
# needs roles/pubsub.subscriber on that subscription and roles/pubsub.publisher on the topic
# (grants.json, made in iam.tf).

resource "terraform_data" "intake_dead_letter" {
  for_each = var.configure_dead_letter ? local.triggers : {}

  triggers_replace = [
    google_eventarc_trigger.intake[each.key].transport[0].pubsub[0].subscription,
    google_pubsub_topic.topic["dead_letter"].id,
    local.pipeline.max_delivery_attempts,
  ]

  provisioner "local-exec" {
    command = join(" ", [
      "gcloud pubsub subscriptions update",
      google_eventarc_trigger.intake[each.key].transport[0].pubsub[0].subscription,
      "--project=${var.project_id}",
      "--dead-letter-topic=${google_pubsub_topic.topic["dead_letter"].id}",
      "--max-delivery-attempts=${local.pipeline.max_delivery_attempts}",
      "--min-retry-delay=10s",
      "--max-retry-delay=600s",
    ])
  }

  depends_on = [
    google_pubsub_subscription_iam_member.grant,
    google_pubsub_topic_iam_member.grant,
  ]
}
