"""A provisioned fleet broker against a real Mosquitto: who may connect, publish and read what.

Each test provisions a fleet on a free loopback port and runs Mosquitto with the
generated mosquitto.conf. Legitimate services connect through fedge's own
``PahoTransport`` with the ``BrokerEndpoint`` provisioning hands out; attackers are
bare paho clients. "Saw nothing" is always checked after a sentinel message that a
legitimate subscriber did receive, published after the forbidden ones: Mosquitto
handles one connection's packets in order and each forbidden publish was already
acknowledged, so anything that was going to be delivered has been.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.mqtt_transport import PahoTransport
from broker.provision import ProvisionedFleet, add_device, provision_fleet, revoke_device
from fedge.errors import TransportError
from fedge.topics import Topics
from fedge.transport import InboundMessage
from tests.integration.fixtures_secure_mqtt import RawClient, SecureBroker, secure_broker
from tests.support import free_port, wait_for_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

FLEET = "plant-7"
T = Topics(FLEET)


class Listener:
    """A legitimate service identity subscribed through PahoTransport."""

    def __init__(self, fleet: ProvisionedFleet, identity: str, filters: list[str]) -> None:
        self.messages: list[InboundMessage] = []
        self._lock = threading.Lock()
        self.transport = PahoTransport(
            fleet.endpoint(identity), client_id=f"{FLEET}-{identity}", connect_timeout=10.0
        )
        self.transport.connect(on_message=self._on_message)
        for topic_filter in filters:
            self.transport.subscribe(topic_filter)

    def _on_message(self, msg: InboundMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def topics(self) -> list[str]:
        with self._lock:
            return [m.topic for m in self.messages]

    def payloads(self, topic: str) -> list[bytes]:
        with self._lock:
            return [m.payload for m in self.messages if m.topic == topic]

    def wait_for(self, topic: str, payload: bytes, timeout: float = 10.0) -> None:
        assert wait_until(lambda: payload in self.payloads(topic), timeout=timeout), (
            f"{topic} {payload!r} never arrived; got {self.topics()}"
        )

    def close(self) -> None:
        self.transport.close()


def _client(fleet: ProvisionedFleet, identity: str, *, client_id: str | None = None) -> RawClient:
    ident = fleet.identity(identity)
    return RawClient(
        port=fleet.broker_port,
        client_id=client_id or f"{FLEET}-{identity}",
        ca_file=fleet.ca_cert,
        cert_file=ident.cert_file,
        key_file=ident.key_file,
        username=identity if fleet.auth == "password" else None,
        password=ident.password,
    )


def _connected(fleet: ProvisionedFleet, identity: str, **kwargs: str) -> RawClient:
    client = _client(fleet, identity, **kwargs)
    assert client.connect(), f"{identity} was refused"
    return client


@pytest.fixture
def fleet(tmp_path: Path) -> ProvisionedFleet:
    return provision_fleet(
        tmp_path / "fleet",
        fleet=FLEET,
        devices=["pump-01", "pump-02"],
        broker_port=free_port(),
        bind_address="127.0.0.1",
    )


@pytest.fixture
def broker(fleet: ProvisionedFleet, tmp_path: Path) -> Iterator[SecureBroker]:
    with secure_broker(fleet, tmp_path / "mosquitto.log") as running:
        yield running


@pytest.fixture
def ingest(fleet: ProvisionedFleet, broker: SecureBroker) -> Iterator[Listener]:
    listener = Listener(
        fleet,
        "ingest",
        [T.all_telemetry, T.all_status, T.all_predictions, f"{T.root}/devices/+/events"],
    )
    yield listener
    listener.close()


@pytest.fixture
def aggregator(fleet: ProvisionedFleet, broker: SecureBroker) -> Iterator[Listener]:
    listener = Listener(fleet, "aggregator", [T.all_status, T.all_updates, T.all_update_chunks])
    yield listener
    listener.close()


# Who may connect ---------------------------------------------------------------------------


def test_tls_client_without_certificate_is_refused(
    fleet: ProvisionedFleet, broker: SecureBroker
) -> None:
    anonymous = RawClient(port=broker.port, client_id="anon", ca_file=fleet.ca_cert)
    assert not anonymous.connect()
    # ...even claiming a username: with certificate auth the identity is the CN.
    claims = RawClient(
        port=broker.port, client_id="anon", ca_file=fleet.ca_cert, username="aggregator"
    )
    assert not claims.connect()


def test_plaintext_mqtt_is_refused(fleet: ProvisionedFleet, broker: SecureBroker) -> None:
    plain = RawClient(port=broker.port, client_id="plain")
    assert not plain.connect()
    assert plain.connack is None  # never got as far as an MQTT CONNACK


def test_certificate_from_another_ca_is_refused(
    fleet: ProvisionedFleet, broker: SecureBroker, tmp_path: Path
) -> None:
    rogue = provision_fleet(tmp_path / "rogue", fleet=FLEET, devices=["pump-01"])
    impostor = RawClient(
        port=broker.port,
        client_id="pump-01",
        ca_file=fleet.ca_cert,  # trusts the real broker...
        cert_file=rogue.identity("pump-01").cert_file,  # ...but its CN is vouched for by nobody
        key_file=rogue.identity("pump-01").key_file,
    )
    assert not impostor.connect()


# What a device may publish -------------------------------------------------------------------


def test_device_cannot_publish_as_another_device_or_the_aggregator(
    fleet: ProvisionedFleet, broker: SecureBroker, ingest: Listener, aggregator: Listener
) -> None:
    victim = _connected(fleet, "pump-02")
    victim.subscribe(T.round_current)
    victim.subscribe(T.global_model)
    attacker = _connected(fleet, "pump-01")
    forged = [
        T.telemetry("pump-02"),
        T.status("pump-02"),
        T.prediction("pump-02"),
        f"{T.root}/devices/pump-02/events",
        T.update(3, "pump-02"),
        T.update_chunks(3, "pump-02"),
        T.global_model,
        T.round_current,
        T.round_summary,
    ]
    for topic in forged:
        attacker.publish(topic, b"forged")
    attacker.publish(T.telemetry("pump-01"), b"sentinel")
    attacker.publish(T.update(3, "pump-01"), b"own-update")
    attacker.publish(T.update_chunks(3, "pump-01"), b"own-chunk")
    ingest.wait_for(T.telemetry("pump-01"), b"sentinel")
    aggregator.wait_for(T.update(3, "pump-01"), b"own-update")
    aggregator.wait_for(T.update_chunks(3, "pump-01"), b"own-chunk")
    # The real aggregator announces a round after the forgeries were acknowledged.
    aggregator.transport.publish(T.round_current, b"real-round", qos=1).wait(5.0)
    assert wait_until(lambda: (T.round_current, b"real-round") in victim.received(), timeout=10)

    everything = ingest.messages + aggregator.messages
    assert [m.topic for m in everything if m.payload == b"forged"] == []
    assert [topic for topic, payload in victim.received() if payload == b"forged"] == []
    assert aggregator.transport.reconnects == 0
    for client in (victim, attacker):
        client.close()


def test_device_publishes_its_own_topics_and_gets_operator_events(
    fleet: ProvisionedFleet, broker: SecureBroker, ingest: Listener, aggregator: Listener
) -> None:
    device = _connected(fleet, "pump-01")
    device.subscribe(f"{T.root}/devices/pump-01/events")
    device.subscribe(f"{T.root}/devices/pump-02/events")  # granted, but never delivered
    for topic, payload in [
        (T.telemetry("pump-01"), b"t"),
        (T.status("pump-01"), b"s"),
        (T.prediction("pump-01"), b"p"),
        (T.update(7, "pump-01"), b"u"),
    ]:
        device.publish(topic, payload)
    ingest.wait_for(T.telemetry("pump-01"), b"t")
    ingest.wait_for(T.status("pump-01"), b"s")
    ingest.wait_for(T.prediction("pump-01"), b"p")
    aggregator.wait_for(T.status("pump-01"), b"s")
    aggregator.wait_for(T.update(7, "pump-01"), b"u")
    assert T.telemetry("pump-01") not in aggregator.topics()  # not in its ACL

    operator = _connected(fleet, "operator")
    operator.publish(f"{T.root}/devices/pump-02/events", b"repair-02")
    operator.publish(f"{T.root}/devices/pump-01/events", b"repair-01")
    assert wait_until(
        lambda: (f"{T.root}/devices/pump-01/events", b"repair-01") in device.received(), timeout=10
    )
    ingest.wait_for(f"{T.root}/devices/pump-02/events", b"repair-02")
    assert [p for _, p in device.received()] == [b"repair-01"]
    device.close()
    operator.close()


def test_only_ingest_writes_a_stored_topic_and_only_its_device_reads_it(
    fleet: ProvisionedFleet, broker: SecureBroker
) -> None:
    # Ingest reads its own retained watermarks back at start, and telemetry (the sentinel).
    real_ingest = Listener(fleet, "ingest", [T.all_stored, T.all_telemetry])
    own = _connected(fleet, "pump-01")
    own.subscribe(T.stored("pump-01"))
    own.subscribe(T.stored("pump-02"))  # granted (SUBACK), but never delivered
    other = _connected(fleet, "pump-02")
    other.subscribe(T.stored("pump-02"))
    # A device confirming its own readings (it could make itself forget unstored
    # ones), or another device's; retained, as a real ack would be.
    own.publish(T.stored("pump-01"), b"forged", retain=True)
    own.publish(T.stored("pump-02"), b"forged", retain=True)
    other.publish(T.stored("pump-01"), b"forged", retain=True)
    own.publish(T.telemetry("pump-01"), b"sentinel")
    real_ingest.wait_for(T.telemetry("pump-01"), b"sentinel")
    # The real ingest confirms both devices, pump-02 first.
    for device in ("pump-02", "pump-01"):
        ack = f"ack-{device}".encode()
        assert real_ingest.transport.publish(T.stored(device), ack, retain=True).wait(5.0)
    assert wait_until(lambda: (T.stored("pump-01"), b"ack-pump-01") in own.received(), timeout=10)
    assert wait_until(
        lambda: (T.stored("pump-02"), b"ack-pump-02") in other.received(), timeout=10
    )
    real_ingest.wait_for(T.stored("pump-01"), b"ack-pump-01")  # ingest reads them back
    assert own.received() == [(T.stored("pump-01"), b"ack-pump-01")]  # not pump-02's
    assert other.received() == [(T.stored("pump-02"), b"ack-pump-02")]
    assert b"forged" not in [m.payload for m in real_ingest.messages]
    # What the broker retained is ingest's word too: a device connecting later gets it.
    late = _connected(fleet, "pump-01", client_id="pump-01")
    late.subscribe(T.stored("pump-01"))
    assert wait_until(lambda: bool(late.received()), timeout=10)
    assert late.received() == [(T.stored("pump-01"), b"ack-pump-01")]
    for client in (own, other, late):
        client.close()
    real_ingest.close()


def test_wildcard_and_shared_subscriptions_deliver_only_permitted_topics(
    fleet: ProvisionedFleet, broker: SecureBroker
) -> None:
    snoop = _connected(fleet, "pump-01")
    for topic_filter in ("#", f"$share/snoop/{T.root}/#", f"$share/x/{T.all_telemetry}"):
        snoop.subscribe(topic_filter)  # Mosquitto 2.0 grants the SUBACK...
    other = _connected(fleet, "pump-02")
    other.publish(T.telemetry("pump-02"), b"secret")
    other.publish(T.update(1, "pump-02"), b"secret")
    real = _connected(fleet, "aggregator")
    real.publish(T.round_summary, b"secret")
    real.publish(T.global_model, b"model")
    # ...and filters each message by the ACL: only model/global reaches the device
    # (once per matching subscription: '#' and the $share/snoop group).
    assert wait_until(lambda: (T.global_model, b"model") in snoop.received(), timeout=10)
    assert snoop.topics() == {T.global_model}
    for client in (snoop, other, real):
        client.close()


def test_two_ingest_workers_share_the_telemetry_without_kicking_each_other(
    tmp_path: Path,
) -> None:
    fleet = provision_fleet(
        tmp_path / "fleet",
        fleet=FLEET,
        devices=["pump-01"],
        broker_port=free_port(),
        bind_address="127.0.0.1",
        ingest_workers=2,
    )
    assert set(fleet.identities) >= {"ingest", "ingest-2"}
    shared = f"$share/ingest/{T.all_telemetry}"
    with secure_broker(fleet, tmp_path / "mosquitto.log"):
        workers = [Listener(fleet, name, [shared]) for name in ("ingest", "ingest-2")]
        device = _connected(fleet, "pump-01")
        for n in range(20):
            device.publish(T.telemetry("pump-01"), str(n).encode())
        got = lambda: sorted(int(p) for w in workers for p in w.payloads(T.telemetry("pump-01")))  # noqa: E731
        assert wait_until(lambda: got() == list(range(20)), timeout=10), got()
        assert all(w.payloads(T.telemetry("pump-01")) for w in workers)  # really shared
        assert all(w.transport.connected and w.transport.reconnects == 0 for w in workers)
        device.close()
        for worker in workers:
            worker.close()


# Client ids are bound to identities -----------------------------------------------------------


def test_reusing_the_aggregators_client_id_does_not_kick_it(
    fleet: ProvisionedFleet, broker: SecureBroker, aggregator: Listener
) -> None:
    # The aggregator asked for client id "plant-7-aggregator"; the broker gave it its
    # username. An attacker tries both ids.
    hijackers = [
        _connected(fleet, "pump-01", client_id=f"{FLEET}-aggregator"),
        _connected(fleet, "pump-02", client_id="aggregator"),
    ]
    hijackers[0].publish(T.status("pump-01"), b"still-listening")
    aggregator.wait_for(T.status("pump-01"), b"still-listening")
    assert aggregator.transport.connected
    assert aggregator.transport.reconnects == 0
    log = broker.log()
    assert "as aggregator (" in log
    assert "as pump-01 (" in log and "as pump-02 (" in log
    assert f"as {FLEET}-aggregator (" not in log
    for client in hijackers:
        assert client.connected
        client.close()


# Revocation and addition ------------------------------------------------------------------------


def test_revoked_device_is_locked_out_and_added_device_gets_in(
    fleet: ProvisionedFleet, broker: SecureBroker, ingest: Listener, tmp_path: Path
) -> None:
    # The device (or a thief) keeps its key and certificate; revocation deletes our copies.
    kept = tmp_path / "kept"
    kept.mkdir()
    ident = fleet.identity("pump-02")
    assert ident.cert_file is not None and ident.key_file is not None
    cert = Path(shutil.copy(ident.cert_file, kept))
    key = Path(shutil.copy(ident.key_file, kept))

    def stale() -> RawClient:
        return RawClient(broker.port, "pump-02", fleet.ca_cert, cert_file=cert, key_file=key)

    # The kept files are good credentials until the revocation (a second connection
    # of one identity would take over the first: check before opening the one we keep).
    before = stale()
    assert before.connect()
    before.close()
    still_connected = _connected(fleet, "pump-02")
    revoke_device(fleet.directory, "pump-02")
    assert not ident.key_file.exists()
    broker.reload()
    assert not stale().connect()
    assert "certificate verify failed" in broker.log().split("Reloading config")[-1]
    # Its open connection survives the reload, but the ACL no longer lists it.
    still_connected.publish(T.telemetry("pump-02"), b"after-revoke")
    sentinel = _connected(fleet, "pump-01")
    sentinel.publish(T.telemetry("pump-01"), b"sentinel")
    ingest.wait_for(T.telemetry("pump-01"), b"sentinel")
    assert b"after-revoke" not in ingest.payloads(T.telemetry("pump-02"))
    still_connected.close()

    grown = add_device(fleet.directory, "pump-03")
    broker.reload()  # the ACL gains pump-03's block
    newcomer = _connected(grown, "pump-03")
    newcomer.publish(T.telemetry("pump-03"), b"hello")
    ingest.wait_for(T.telemetry("pump-03"), b"hello")

    ingest.close()
    broker.restart()  # a restart reads the CRL afresh too
    assert not stale().connect()
    assert _client(grown, "pump-03").connect()
    for client in (sentinel, newcomer):
        client.close()


# Password auth ------------------------------------------------------------------------------------


def test_password_auth_accepts_the_right_password_only(tmp_path: Path) -> None:
    fleet = provision_fleet(
        tmp_path / "fleet",
        fleet=FLEET,
        devices=["pump-01", "pump-02"],
        broker_port=free_port(),
        bind_address="127.0.0.1",
        auth="password",
    )
    with secure_broker(fleet, tmp_path / "mosquitto.log") as broker:
        ingest = Listener(fleet, "ingest", [T.all_telemetry])
        device = _connected(fleet, "pump-01")
        device.publish(T.telemetry("pump-01"), b"pw-ok")
        ingest.wait_for(T.telemetry("pump-01"), b"pw-ok")

        def attempt(username: str | None, password: str | None) -> RawClient:
            client = RawClient(
                port=broker.port,
                client_id="guess",
                ca_file=fleet.ca_cert,
                username=username,
                password=password,
            )
            assert not client.connect()
            return client

        wrong = attempt("pump-01", "not-the-password")
        assert wrong.connack is not None and wrong.connack.is_failure
        other = attempt("pump-01", fleet.identity("pump-02").password)
        assert other.connack is not None and other.connack.is_failure
        anonymous = attempt(None, None)
        assert anonymous.connack is not None and anonymous.connack.is_failure
        with pytest.raises(TransportError, match="refused"):
            PahoTransport(
                fleet.endpoint("pump-01").model_copy(update={"password": "nope"}),
                client_id="x",
                connect_timeout=5.0,
            ).connect(on_message=lambda msg: None)

        password = fleet.identity("pump-02").password
        revoke_device(fleet.directory, "pump-02")
        broker.reload()
        attempt("pump-02", password)
        device.close()
        ingest.close()


# Persistence -----------------------------------------------------------------------------------


def test_retained_model_survives_a_broker_crash(
    fleet: ProvisionedFleet, broker: SecureBroker
) -> None:
    aggregator = _connected(fleet, "aggregator")
    aggregator.publish(T.global_model, b"model-v1", retain=True)
    aggregator.close()
    # autosave_interval 1: the database is on disk within about a second.
    db = fleet.data_dir / "mosquitto.db"
    assert wait_until(lambda: db.exists() and db.stat().st_size > 0, timeout=5)
    time.sleep(2.5)
    broker.restart(kill=True)  # SIGKILL: no save at exit
    device = _connected(fleet, "pump-01")
    device.subscribe(T.global_model)
    assert wait_until(lambda: (T.global_model, b"model-v1") in device.received(), timeout=10)
    device.close()


# The broker runs as an unprivileged user ------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another user")
def test_broker_started_as_root_runs_as_the_broker_user(tmp_path: Path) -> None:
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user (the Debian package creates it)")
    # tmp_path's parents are private to root; the broker user must traverse its directory.
    top = Path(tempfile.mkdtemp(prefix="fedge-prov-"))
    try:
        top.chmod(0o755)
        fleet = provision_fleet(
            top / "fleet",
            fleet=FLEET,
            devices=["pump-01"],
            broker_port=free_port(),
            bind_address="127.0.0.1",
            broker_user="mosquitto",
        )
        with secure_broker(fleet, tmp_path / "mosquitto.log") as broker:
            ingest = Listener(fleet, "ingest", [T.all_telemetry])
            device = _connected(fleet, "pump-01")
            device.publish(T.telemetry("pump-01"), b"unprivileged")
            ingest.wait_for(T.telemetry("pump-01"), b"unprivileged")
            assert broker.proc is not None
            status = Path(f"/proc/{broker.proc.pid}/status").read_text().splitlines()
            real_uid = next(line.split()[1] for line in status if line.startswith("Uid:"))
            assert int(real_uid) == pwd.getpwnam("mosquitto").pw_uid
            device.close()
            ingest.close()
            revoke_device(fleet.directory, "pump-01")  # rewritten files go back to the user
            broker.reload()
            assert broker.proc.poll() is None
            assert "Error" not in broker.log().split("Reloading config")[-1]
    finally:
        shutil.rmtree(top, ignore_errors=True)


# The shipped demo configuration ----------------------------------------------------------------


def test_shipped_demo_conf_serves_anonymous_clients_on_loopback(tmp_path: Path) -> None:
    shipped = (Path(__file__).resolve().parents[2] / "broker" / "mosquitto.conf").read_text()
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    # Same file, a free port and a private persistence directory.
    conf.write_text(
        shipped.replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1").replace(
            "persistence_location /var/lib/mosquitto/", f"persistence_location {tmp_path}/"
        )
    )
    assert f"listener {port} 127.0.0.1" in conf.read_text()
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdout=out, stderr=out)
    try:
        wait_for_port(port, timeout=10.0)
        sub = RawClient(port=port, client_id="demo-sub")
        assert sub.connect(), log.read_text()
        sub.subscribe("fedge/v1/demo/#")
        pub = RawClient(port=port, client_id="demo-pub")
        assert pub.connect()
        pub.publish("fedge/v1/demo/devices/d1/telemetry", b"demo")
        assert wait_until(lambda: sub.received() != [], timeout=10)
        sub.close()
        pub.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
