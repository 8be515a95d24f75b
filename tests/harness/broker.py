"""The tests' mosquitto is the demo's (`mcufleet.local_broker`): one launcher, re-exported here."""

from mcufleet.local_broker import MosquittoBroker

__all__ = ["MosquittoBroker"]
