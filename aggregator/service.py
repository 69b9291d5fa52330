"""The aggregator process: a transport, a :class:`RoundCoordinator`, a checkpoint store.

Inbound messages are queued by the transport callback and handled on the
service thread; the coordinator decides, the service carries out its effects.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from aggregator.checkpoint import CheckpointStore
from aggregator.coordinator import Publish, RoundClosed, RoundCoordinator, SaveCheckpoint
from aggregator.state import Checkpoint
from fedge.config import AggregatorConfig
from fedge.errors import FedgeError, TransportError
from fedge.messages import RoundSummary
from fedge.models import build_model, state_tensors, trainable_names
from fedge.strategies import Strategy
from fedge.topics import Topics
from fedge.transport import InboundMessage, Transport, drain

__all__ = ["AggregatorService"]

log = logging.getLogger(__name__)


class AggregatorService:
    """Runs the fleet's rounds over ``transport`` until the configured rounds are done."""

    def __init__(
        self,
        config: AggregatorConfig,
        *,
        transport: Transport,
        checkpoints: CheckpointStore | None = None,
        on_round: Callable[[RoundSummary], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.transport = transport
        self.checkpoints = checkpoints or CheckpointStore(config.checkpoint_dir)
        self.on_round = on_round
        self.clock = clock
        self.topics = Topics(config.fleet)
        self._inbox: queue.Queue[InboundMessage] = queue.Queue()
        self.coordinator = self._make_coordinator()

    def _make_coordinator(self) -> RoundCoordinator:
        model = build_model(self.config.model, seed=self.config.seed)
        initial = self.checkpoints.load_latest()
        if initial is None:
            initial = Checkpoint(
                fleet=self.config.fleet,
                version=0,
                round_id=-1,
                spec=self.config.model,
                tensors=state_tensors(model),
                stats_done=False,
            )
        else:
            log.info(
                "resuming from checkpoint: version %d, round %d", initial.version, initial.round_id
            )
            if initial.spec != self.config.model:
                log.warning("checkpoint model spec differs from config; using the checkpoint's")
                model = build_model(initial.spec)
        return RoundCoordinator(
            self.config,
            strategy=Strategy.from_settings(self.config),
            initial=initial,
            trainable=trainable_names(model),
        )

    @property
    def history(self) -> list[RoundSummary]:
        return self.coordinator.history

    def _execute(self, effects: list[Publish | SaveCheckpoint | RoundClosed]) -> None:
        # Checkpoints last: an fsync (15-30 ms on a busy disk) must not hold back the next
        # round's announcement, which the fleet waits for. Recovery is as before: a crash
        # before the save resumes from the previous checkpoint, which the global model
        # already outran too.
        saves = [e for e in effects if isinstance(e, SaveCheckpoint)]
        for effect in [e for e in effects if not isinstance(e, SaveCheckpoint)] + saves:
            if isinstance(effect, Publish):
                self.transport.publish(
                    effect.topic, effect.payload, qos=effect.qos, retain=effect.retain
                )
            elif isinstance(effect, SaveCheckpoint):
                self.checkpoints.save(effect.checkpoint)
            elif self.on_round is not None:
                try:
                    self.on_round(effect.summary)
                except Exception:
                    log.exception("on_round callback failed")

    def start(self) -> None:
        """Connect, subscribe to status and updates, publish the current global model."""
        self.transport.connect(on_message=self._inbox.put)
        self.transport.subscribe(self.topics.all_status)
        self.transport.subscribe(self.topics.all_updates)
        self.transport.subscribe(self.topics.all_update_chunks)
        self._execute(self.coordinator.start(self.clock()))

    def step(self, *, timeout: float = 0.1) -> None:
        """Handle queued messages (waiting up to ``timeout``) and advance the clock."""
        for msg in drain(self._inbox, timeout=timeout):
            try:
                self._execute(self.coordinator.handle(msg.topic, msg.payload, self.clock()))
            except TransportError:
                raise
            except FedgeError as exc:  # one bad message never stops the aggregator
                log.warning("error handling %s: %s", msg.topic, exc)
        self._execute(self.coordinator.tick(self.clock()))

    def run(
        self, *, stop: threading.Event | None = None, timeout: float | None = None
    ) -> list[RoundSummary]:
        """Run until all rounds are done, ``stop`` is set, or ``timeout`` seconds pass."""
        stop = stop or threading.Event()
        deadline = None if timeout is None else time.monotonic() + timeout
        self.start()
        try:
            while not stop.is_set() and not self.coordinator.finished:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"aggregator did not finish within {timeout}s")
                self.step(timeout=0.05)
        finally:
            self.transport.close()
        return self.history
