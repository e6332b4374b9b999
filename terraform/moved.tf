# Where each grant was before grants.json: iam.tf had a resource per need (and triggers.tf the
# subscription grants); they are now instances of one resource per target kind. Without
# these, an apply over an existing deployment would destroy each old grant and create the
# same binding under its new address, and a destroy that runs after the create removes the
# binding. tests/unit/test_terraform.py checks that every `to` is a grant grants.json makes.
# (Safe to delete once every deployment has applied them.)

moved {
  from = google_project_iam_custom_role.bucket_location_reader
  to   = google_project_iam_custom_role.custom["bucketLocationReader"]
}

moved {
  from = google_project_iam_member.function["on-source-uploaded roles/workflows.invoker"]
  to   = google_project_iam_member.grant["function:on-source-uploaded roles/workflows.invoker project"]
}

moved {
  from = google_project_iam_member.function["on-source-uploaded roles/workflows.viewer"]
  to   = google_project_iam_member.grant["function:on-source-uploaded roles/workflows.viewer project"]
}

moved {
  from = google_project_iam_member.function["on-deploy-request roles/workflows.invoker"]
  to   = google_project_iam_member.grant["function:on-deploy-request roles/workflows.invoker project"]
}

moved {
  from = google_project_iam_member.function["on-deploy-request roles/workflows.viewer"]
  to   = google_project_iam_member.grant["function:on-deploy-request roles/workflows.viewer project"]
}

moved {
  from = google_project_iam_member.function["build roles/cloudbuild.builds.editor"]
  to   = google_project_iam_member.grant["function:build roles/cloudbuild.builds.editor project"]
}

moved {
  from = google_project_iam_member.function["build roles/workflows.viewer"]
  to   = google_project_iam_member.grant["function:build roles/workflows.viewer project"]
}

moved {
  from = google_project_iam_member.function["push roles/workflows.viewer"]
  to   = google_project_iam_member.grant["function:push roles/workflows.viewer project"]
}

moved {
  from = google_project_iam_member.function["deploy roles/run.admin"]
  to   = google_project_iam_member.grant["function:deploy roles/run.admin project"]
}

moved {
  from = google_project_iam_member.function["deploy roles/workflows.viewer"]
  to   = google_project_iam_member.grant["function:deploy roles/workflows.viewer project"]
}

moved {
  from = google_project_iam_member.function["bind-triggers roles/eventarc.admin"]
  to   = google_project_iam_member.grant["function:bind-triggers roles/eventarc.admin project"]
}

moved {
  from = google_project_iam_member.function["bind-triggers roles/pubsub.editor"]
  to   = google_project_iam_member.grant["function:bind-triggers roles/pubsub.editor project"]
}

moved {
  from = google_project_iam_member.function["bind-triggers roles/run.admin"]
  to   = google_project_iam_member.grant["function:bind-triggers roles/run.admin project"]
}

moved {
  from = google_project_iam_member.function["bind-triggers roles/workflows.viewer"]
  to   = google_project_iam_member.grant["function:bind-triggers roles/workflows.viewer project"]
}

moved {
  from = google_storage_bucket_iam_member.function_records["on-source-uploaded"]
  to   = google_storage_bucket_iam_member.grant["function:on-source-uploaded roles/storage.objectUser bucket:records"]
}

moved {
  from = google_storage_bucket_iam_member.function_records["on-deploy-request"]
  to   = google_storage_bucket_iam_member.grant["function:on-deploy-request roles/storage.objectUser bucket:records"]
}

moved {
  from = google_storage_bucket_iam_member.function_records["build"]
  to   = google_storage_bucket_iam_member.grant["function:build roles/storage.objectUser bucket:records"]
}

moved {
  from = google_storage_bucket_iam_member.function_records["push"]
  to   = google_storage_bucket_iam_member.grant["function:push roles/storage.objectUser bucket:records"]
}

moved {
  from = google_storage_bucket_iam_member.function_records["deploy"]
  to   = google_storage_bucket_iam_member.grant["function:deploy roles/storage.objectUser bucket:records"]
}

moved {
  from = google_storage_bucket_iam_member.function_records["bind-triggers"]
  to   = google_storage_bucket_iam_member.grant["function:bind-triggers roles/storage.objectUser bucket:records"]
}

moved {
  from = google_storage_bucket_iam_member.intake_reads_sources["on-source-uploaded"]
  to   = google_storage_bucket_iam_member.grant["function:on-source-uploaded roles/storage.objectViewer bucket:sources"]
}

moved {
  from = google_storage_bucket_iam_member.intake_reads_sources["on-deploy-request"]
  to   = google_storage_bucket_iam_member.grant["function:on-deploy-request roles/storage.objectViewer bucket:sources"]
}

moved {
  from = google_pubsub_topic_iam_member.function_status["on-source-uploaded"]
  to   = google_pubsub_topic_iam_member.grant["function:on-source-uploaded roles/pubsub.publisher topic:status"]
}

moved {
  from = google_pubsub_topic_iam_member.function_status["on-deploy-request"]
  to   = google_pubsub_topic_iam_member.grant["function:on-deploy-request roles/pubsub.publisher topic:status"]
}

moved {
  from = google_pubsub_topic_iam_member.function_status["build"]
  to   = google_pubsub_topic_iam_member.grant["function:build roles/pubsub.publisher topic:status"]
}

moved {
  from = google_pubsub_topic_iam_member.function_status["push"]
  to   = google_pubsub_topic_iam_member.grant["function:push roles/pubsub.publisher topic:status"]
}

moved {
  from = google_pubsub_topic_iam_member.function_status["deploy"]
  to   = google_pubsub_topic_iam_member.grant["function:deploy roles/pubsub.publisher topic:status"]
}

moved {
  from = google_pubsub_topic_iam_member.function_status["bind-triggers"]
  to   = google_pubsub_topic_iam_member.grant["function:bind-triggers roles/pubsub.publisher topic:status"]
}

moved {
  from = google_artifact_registry_repository_iam_member.push_writer
  to   = google_artifact_registry_repository_iam_member.grant["function:push roles/artifactregistry.writer repository"]
}

moved {
  from = google_service_account_iam_member.function_act_as["build build"]
  to   = google_service_account_iam_member.grant["function:build roles/iam.serviceAccountUser account:build"]
}

moved {
  from = google_service_account_iam_member.function_act_as["deploy runtime"]
  to   = google_service_account_iam_member.grant["function:deploy roles/iam.serviceAccountUser account:runtime"]
}

moved {
  from = google_service_account_iam_member.function_act_as["bind-triggers trigger"]
  to   = google_service_account_iam_member.grant["function:bind-triggers roles/iam.serviceAccountUser account:trigger"]
}

moved {
  from = google_storage_bucket_iam_member.build_reads_logs
  to   = google_storage_bucket_iam_member.grant["function:build roles/storage.objectViewer bucket:build_logs"]
}

moved {
  from = google_project_iam_member.bind_triggers_reads_bucket_location
  to   = google_project_iam_member.grant["function:bind-triggers custom:bucketLocationReader project"]
}

moved {
  from = google_storage_bucket_iam_member.builder_reads_sources
  to   = google_storage_bucket_iam_member.grant["account:build roles/storage.objectViewer bucket:sources"]
}

moved {
  from = google_storage_bucket_iam_member.builder_reads_code
  to   = google_storage_bucket_iam_member.grant["account:build roles/storage.objectViewer bucket:code"]
}

moved {
  from = google_project_iam_member.builder_reads_function_sources
  to   = google_project_iam_member.grant["account:build roles/storage.objectViewer project"]
}

moved {
  from = google_artifact_registry_repository_iam_member.builder_writer
  to   = google_artifact_registry_repository_iam_member.grant["account:build roles/artifactregistry.writer repository"]
}

moved {
  from = google_storage_bucket_iam_member.builder_writes_logs
  to   = google_storage_bucket_iam_member.grant["account:build roles/storage.admin bucket:build_logs"]
}

moved {
  from = google_project_iam_member.builder_logs
  to   = google_project_iam_member.grant["account:build roles/logging.logWriter project"]
}

moved {
  from = google_cloud_run_v2_service_iam_member.workflow_invokes_step["build"]
  to   = google_cloud_run_v2_service_iam_member.grant["account:workflow roles/run.invoker service:build"]
}

moved {
  from = google_cloud_run_v2_service_iam_member.workflow_invokes_step["push"]
  to   = google_cloud_run_v2_service_iam_member.grant["account:workflow roles/run.invoker service:push"]
}

moved {
  from = google_cloud_run_v2_service_iam_member.workflow_invokes_step["deploy"]
  to   = google_cloud_run_v2_service_iam_member.grant["account:workflow roles/run.invoker service:deploy"]
}

moved {
  from = google_cloud_run_v2_service_iam_member.workflow_invokes_step["bind-triggers"]
  to   = google_cloud_run_v2_service_iam_member.grant["account:workflow roles/run.invoker service:bind-triggers"]
}

moved {
  from = google_pubsub_topic_iam_member.workflow_status
  to   = google_pubsub_topic_iam_member.grant["account:workflow roles/pubsub.publisher topic:status"]
}

moved {
  from = google_project_iam_member.workflow_logs
  to   = google_project_iam_member.grant["account:workflow roles/logging.logWriter project"]
}

moved {
  from = google_project_iam_member.trigger_receiver
  to   = google_project_iam_member.grant["account:trigger roles/eventarc.eventReceiver project"]
}

moved {
  from = google_cloud_run_v2_service_iam_member.trigger_invokes_intake["on-source-uploaded"]
  to   = google_cloud_run_v2_service_iam_member.grant["account:trigger roles/run.invoker service:on-source-uploaded"]
}

moved {
  from = google_cloud_run_v2_service_iam_member.trigger_invokes_intake["on-deploy-request"]
  to   = google_cloud_run_v2_service_iam_member.grant["account:trigger roles/run.invoker service:on-deploy-request"]
}

moved {
  from = google_project_iam_member.trigger_invokes_services
  to   = google_project_iam_member.grant["account:trigger roles/run.invoker project"]
}

moved {
  from = google_project_iam_member.gcs_publisher
  to   = google_project_iam_member.grant["agent:storage roles/pubsub.publisher project"]
}

moved {
  from = google_service_account_iam_member.pubsub_token_creator
  to   = google_service_account_iam_member.grant["agent:pubsub roles/iam.serviceAccountTokenCreator account:trigger"]
}

moved {
  from = google_pubsub_topic_iam_member.pubsub_dead_letter_publisher
  to   = google_pubsub_topic_iam_member.grant["agent:pubsub roles/pubsub.publisher topic:dead_letter"]
}

moved {
  from = google_pubsub_subscription_iam_member.pubsub_forwards_dead_letters["source-uploaded"]
  to   = google_pubsub_subscription_iam_member.grant["agent:pubsub roles/pubsub.subscriber subscription:source-uploaded"]
}

moved {
  from = google_pubsub_subscription_iam_member.pubsub_forwards_dead_letters["deploy-request"]
  to   = google_pubsub_subscription_iam_member.grant["agent:pubsub roles/pubsub.subscriber subscription:deploy-request"]
}
