"""Callbacks for `gradcore_jax.fit(..., callbacks=[...])`.

`Callback` is the base class (no-op hooks `on_train_begin`, `on_epoch_begin`, `on_sync`,
`on_epoch_end`, `on_train_end`, each given a read-only `Run` and able to stop training);
`EarlyStopping`, `CSVLogger`, `TensorBoard` (needs the `tensorboard` extra) and
`WeightAveraging` (torch's SWA / EMA average of the trained params) are built in. The
learning-rate plateau is `fit(lr_plateau=...)`, not a callback: it must write the optimizer state
before the epoch's checkpoint, which a read-only view cannot. Keras'
`TerminateOnNaN` is `fit(on_nonfinite="raise")`, the default. The code lives in
`gradcore_jax.training._callbacks`, which `fit` uses.
"""

from gradcore_jax.training._callbacks import Callback
from gradcore_jax.training._callbacks import CSVLogger
from gradcore_jax.training._callbacks import EarlyStopping
from gradcore_jax.training._callbacks import Run
from gradcore_jax.training._callbacks import Snapshot
from gradcore_jax.training._callbacks import TensorBoard
from gradcore_jax.training._callbacks import WeightAveraging

__all__ = ["CSVLogger", "Callback", "EarlyStopping", "Run", "Snapshot", "TensorBoard", "WeightAveraging"]
