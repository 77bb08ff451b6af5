"""The async gateway: accept calls over HTTP, store them in JetStream, report and cancel them."""
