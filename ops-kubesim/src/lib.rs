//! A Kubernetes API-server simulator for tests (skeleton; being written).
