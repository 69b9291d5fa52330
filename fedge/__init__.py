"""fedge: federated predictive maintenance over MQTT.

The ``fedge`` package is the sans-I/O core shared by the edge agent and the
aggregator: wire protocol (topics, messages, frames), models, training,
aggregation strategies, data and configuration.
"""

from fedge.errors import FedgeError

__all__ = ["FedgeError", "__version__"]

__version__ = "0.1.0"
