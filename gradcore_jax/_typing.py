"""Type aliases shared across the package."""

from __future__ import annotations

from typing import Any, Callable, Union

import jax

Array = jax.Array
Scalar = Union[float, int, jax.Array]
Schedule = Callable[[jax.Array], jax.Array]
ScalarOrSchedule = Union[Scalar, Schedule]
PyTree = Any
