"""jetqueue runtime: the async gateway, the queue-worker and the queue operations.

This package needs only nats-py, aiohttp and prometheus-client, so the image stays small.
"""

__version__ = "0.1.0"
