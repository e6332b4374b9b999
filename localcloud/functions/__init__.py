"""The Cloud Functions API v2 (``google.cloud.functions.v2.FunctionService``), built on
localcloud's Cloud Storage, Cloud Build, Artifact Registry, Cloud Run and Eventarc."""
