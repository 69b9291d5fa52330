"""fedge's application layer: the ``fedge`` CLI, the demo, the in-process simulation,
the HTML report and the one wiring module that builds agents, aggregators and ingest
services from config. It may import every other package; nothing imports it."""

__all__: list[str] = []
