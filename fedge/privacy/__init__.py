"""Client-level differential privacy: clipping + Gaussian noise, and its accounting.

Trust model (option (b), distributed noise): the aggregator is *curious* — it runs
the protocol but may look at what it receives. So the noise is added **on the
device**, where the aggregator cannot remove it: each device clips the delta of its
update (``update - global``) to L2 norm ``C`` and adds ``N(0, (z C)^2 / n)`` to every
coordinate, ``n`` = the round's expected clients (:func:`privatize_update`, called by
the edge agent with ``RoundAnnouncement.training.dp``). The unweighted sum of ``n``
such updates then carries ``N(0, (z C)^2)``: the noise of central DP-FedAvg with
noise multiplier ``z`` and sensitivity ``C``. The server clips again (defence in
depth, :func:`server_clip_bound`) and weighs every update equally.

What this does and does not give, stated by :mod:`fedge.privacy.accountant`:

* against everyone who sees only the **published global models** (other devices,
  dashboards, anyone on the broker's global topic): the central guarantee, epsilon
  from composing ``z_eff = z sqrt(n_actual / n)`` per round (``dp_epsilon``);
* against the **aggregator itself**, without secure aggregation it sees each update
  with only that device's share of the noise, multiplier ``z / sqrt(n)``
  (``dp_epsilon_local``). ``expected_clients = 1`` makes it local DP (full noise on
  every device, both numbers equal, ``n`` times the variance in the aggregate).

This module is numpy only (devices import it); the accountant needs ``dp-accounting``
(the ``server`` extra) and is imported as :mod:`fedge.privacy.accountant`.
"""

from __future__ import annotations

from fedge.privacy.mechanism import (
    clip_update,
    device_noise_std,
    privatize_update,
    server_clip_bound,
)

__all__ = ["clip_update", "device_noise_std", "privatize_update", "server_clip_bound"]
