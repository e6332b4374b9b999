# deploy-requests, deploy-status, deploy-dead-letter (ids from pipeline.json).
resource "google_pubsub_topic" "topic" {
  for_each = local.topics

  name    = each.value
  project = var.project_id

  depends_on = [google_project_service.api]
}

# Nothing is dropped silently: a message that exhausts its deliveries lands on the
# dead-letter topic, and this subscription keeps it (7 days) for `gcloud pubsub
# subscriptions pull` to inspect or replay.
resource "google_pubsub_subscription" "dead_letter" {
  name    = local.pipeline.dead_letter_subscription
  project = var.project_id
  topic   = google_pubsub_topic.topic["dead_letter"].id

  message_retention_duration = "604800s"
  retain_acked_messages      = false
  ack_deadline_seconds       = 60

  expiration_policy {
    ttl = "" # never expires, even when nobody reads it
  }
}
