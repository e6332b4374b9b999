variable "project_id" {
  description = "The Google Cloud project to deploy the orchestrator into (its id, not its number or display name)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project id: 6 to 30 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "region" {
  description = "The region for the functions, the workflow, the Eventarc triggers, the Artifact Registry repository and the sources bucket (one region keeps storage events local to their trigger)."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1 or europe-west1 (a region, not a zone or a multi-region)."
  }
}

variable "name_prefix" {
  description = "Prefix of the orchestrator's functions, triggers and service accounts (orch-build, orch-workflow, ...). Null takes name_prefix from pipeline/orchestrator/pipeline.json. At most 11 characters, so that the longest service account id (PREFIX-on-source-uploaded) stays within IAM's 30."
  type        = string
  default     = null

  validation {
    condition     = var.name_prefix == null || can(regex("^[a-z][a-z0-9-]{0,9}[a-z0-9]$|^[a-z]$", var.name_prefix))
    error_message = "name_prefix must be 1 to 11 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "function_runtime" {
  description = "The Cloud Run functions runtime of the orchestrator's own functions."
  type        = string
  default     = "python311"

  validation {
    condition     = can(regex("^python3[0-9]+$", var.function_runtime))
    error_message = "function_runtime must be a Python runtime id such as python311 or python312."
  }
}

variable "function_memory" {
  description = "Memory of each orchestrator function instance (Cloud Run functions notation, e.g. 256M, 512M, 1G)."
  type        = string
  default     = "512M"

  validation {
    condition     = can(regex("^[0-9]+(M|Mi|G|Gi)$", var.function_memory))
    error_message = "function_memory must be a size such as 256M, 512M or 1G."
  }
}

variable "function_max_instances" {
  description = "Upper bound on instances of each orchestrator function (they scale to zero when idle)."
  type        = number
  default     = 10

  validation {
    condition     = var.function_max_instances >= 1 && var.function_max_instances <= 1000 && floor(var.function_max_instances) == var.function_max_instances
    error_message = "function_max_instances must be a whole number from 1 to 1000."
  }
}

variable "source_retention_days" {
  description = "Days a replaced or deleted source archive (a noncurrent object version in the sources bucket) is kept before the lifecycle rule deletes it."
  type        = number
  default     = 30

  validation {
    condition     = var.source_retention_days >= 1 && floor(var.source_retention_days) == var.source_retention_days
    error_message = "source_retention_days must be a whole number of days, at least 1."
  }
}

variable "image_retention_days" {
  description = "Days after which the Artifact Registry cleanup policy deletes image versions, except the most recent keep_image_versions of each image."
  type        = number
  default     = 30

  validation {
    condition     = var.image_retention_days >= 1 && floor(var.image_retention_days) == var.image_retention_days
    error_message = "image_retention_days must be a whole number of days, at least 1."
  }
}

variable "keep_image_versions" {
  description = "How many of the most recent versions of each image the cleanup policy always keeps (so a rollback target survives)."
  type        = number
  default     = 5

  validation {
    condition     = var.keep_image_versions >= 1 && floor(var.keep_image_versions) == var.keep_image_versions
    error_message = "keep_image_versions must be a whole number, at least 1."
  }
}

variable "record_retention_days" {
  description = "Days the orchestrator's records of a deployment (its claim and saved step results, under deployments/ in the records bucket) are kept before the lifecycle rule deletes them. Service locks and trigger locations are never deleted. At least 7: Pub/Sub redelivers an intake event for up to 7 days, and a redelivered event must still find its deployment's claim."
  type        = number
  default     = 30

  validation {
    condition     = var.record_retention_days >= 7 && floor(var.record_retention_days) == var.record_retention_days
    error_message = "record_retention_days must be a whole number of days, at least 7 (Pub/Sub's longest redelivery window)."
  }
}

variable "build_log_retention_days" {
  description = "Days a build's log is kept in the build logs bucket before the lifecycle rule deletes it."
  type        = number
  default     = 30

  validation {
    condition     = var.build_log_retention_days >= 1 && floor(var.build_log_retention_days) == var.build_log_retention_days
    error_message = "build_log_retention_days must be a whole number of days, at least 1."
  }
}

variable "runtime_roles" {
  description = "Project roles for the runtime service account that every deployed user service runs as (empty by default: grant what your functions need, e.g. roles/pubsub.publisher)."
  type        = set(string)
  default     = []

  validation {
    condition     = alltrue([for role in var.runtime_roles : can(regex("^(roles|projects/[^/]+/roles|organizations/[0-9]+/roles)/[A-Za-z0-9_.]+$", role))])
    error_message = "Each runtime_roles entry must be a role name such as roles/pubsub.publisher."
  }
}

variable "configure_dead_letter" {
  description = "Attach the dead-letter topic and a retry backoff to the Pub/Sub subscriptions Eventarc creates for the two intake triggers (the provider has no argument for that; it runs gcloud once per trigger at apply time, so gcloud must be installed)."
  type        = bool
  default     = true
}

variable "deletion_protection" {
  description = "Refuse to destroy the workflow, and keep the buckets from being destroyed while they still hold objects. False lets `terraform destroy` remove everything."
  type        = bool
  default     = false
}

variable "labels" {
  description = "Labels added to every resource that takes labels."
  type        = map(string)
  default     = { app = "serverless-deploy-orchestrator" }

  validation {
    condition     = alltrue([for key, value in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", key)) && can(regex("^[a-z0-9_-]{0,63}$", value))])
    error_message = "Label keys must start with a lowercase letter; keys and values are at most 63 lowercase letters, digits, underscores or hyphens."
  }
}
