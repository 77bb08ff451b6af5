"""The contract every part of jetqueue shares: names, the message format, call states, JetStream configs."""

from jetqueue.contract.message import *  # noqa: F403
