"""The contract every part of jetqueue shares: the runtime, the generator and the operator commands.

- `names`: every stream, consumer, subject and bucket name, and the name patterns;
- `message`: how a call travels as a NATS message (subject, headers, body) and is decoded;
- `states`: the states of a call, as its status record shows them;
- `priorities`: a call's level (`X-Priority`) and the turns a worker gives the levels;
- `partitions`: which partition a call goes to and which status bucket holds its records;
- `jetstream`: the streams, consumers and bucket of a queue, for nats-py and for NACK.

`from jetqueue import contract` gives all but `jetstream` flat (`contract.stream_name`, `contract.Call`, ...).
"""

from jetqueue.contract.message import *  # noqa: F403
from jetqueue.contract.names import *  # noqa: F403
from jetqueue.contract.partitions import *  # noqa: F403
from jetqueue.contract.priorities import *  # noqa: F403
from jetqueue.contract.states import *  # noqa: F403
