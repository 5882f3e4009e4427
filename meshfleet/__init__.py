"""meshfleet: one management plane for the Istio meshes of many clusters.

This package holds what the hub (`mgmt`) and the agent (`agent`) share without
importing each other: the generated protocol (`meshfleet.v1`), the intent
contract (`meshfleet.intents`), key-file helpers and the command line.
"""

__version__ = "0.1.0"
