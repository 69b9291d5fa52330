"""The one value type every part of a strategy passes around: named numpy arrays."""

from __future__ import annotations

import numpy as np

__all__ = ["Params"]

Params = dict[str, np.ndarray]
"""Tensors by name, e.g. a model's trainable weights or a reducer's aggregate."""
