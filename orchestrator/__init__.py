"""orchestrate: the engine, data, config, Ray adapters, MLflow tracking and CLI."""
