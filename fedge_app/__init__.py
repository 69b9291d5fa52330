"""fedge's application layer: the ``fedge`` CLI, the demo, the in-process simulation,
the HTML report, the one wiring module that builds agents, aggregators and ingest
services from config, and the real-server launchers (``servers``) the integration
tests and benchmarks share. It may import every other package; no package imports it."""

__all__: list[str] = []
