"""Type aliases shared across the package."""

from __future__ import annotations

from typing import Any
from typing import Callable
from typing import Union

import jax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Scalar = Union[float, int, jax.Array]
Schedule = Callable[[jax.Array], jax.Array]
ScalarOrSchedule = Union[Scalar, Schedule]
PyTree = Any
