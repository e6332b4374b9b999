"""The serverless deploy orchestrator: the pipeline's functions, schemas, client factory, CLI."""
