"""The serverless deploy orchestrator's functions: intake, steps, schemas, the client factory."""
