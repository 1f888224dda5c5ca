"""The shared broker layer: one stream per channel, on Redis or in memory.

Both services talk to a ``Broker``; ``create_broker`` picks the implementation
from the settings.
"""

from broker.base import Broker, Entry
from broker.factory import create_broker
from broker.keys import stream_key

__all__ = ["Broker", "Entry", "create_broker", "stream_key"]
