"""jetqueue: async function queues on NATS JetStream.

Import name of the repository's folders: worker/ is this package (the runtime: `gateway`, `queueworker`,
`ops`, `client`, and the shared `contract`), generator/ is `jetqueue.generator` (validate and render
queues.yaml; needs the `generator` extra). The runtime needs only nats-py, aiohttp and prometheus-client.
"""

__version__ = "0.1.0"
