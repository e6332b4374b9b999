# Copy to terraform.tfvars (ignored by git) and set your project.
project_id = "my-project"
region     = "us-central1"
# name_prefix = "orch"            # 1-11 characters; default from pipeline/orchestrator/pipeline.json
# runtime_roles = ["roles/pubsub.publisher"]   # what deployed services may do
# cloud_build_service_account = "123456789012-compute@developer.gserviceaccount.com"
