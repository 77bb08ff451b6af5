"""jetqueue generator: validate queues.yaml and render Helm values for NATS, the workers and the gateway."""
