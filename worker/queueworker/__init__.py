"""The queue-worker: pull calls from JetStream, invoke the functions, retry, dead-letter, call back."""
