# Copy to terraform.tfvars (ignored by git) and set your project.
project_id = "my-project"
region     = "us-central1"
# name_prefix = "orch"            # 1-11 characters; default from pipeline/orchestrator/pipeline.json
# runtime_roles = ["roles/pubsub.publisher"]   # what deployed services may do
# record_retention_days = 30       # deployment records (claims, step results); at least 7
# build_log_retention_days = 30
