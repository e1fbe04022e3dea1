"""The numeric engine: recurrent cells, projections and the loss, in plain numpy.

Products use column vectors, `W^T x`, with W stored `(D, G)` as in the checkpoint, so the
batch is the last axis. A sequence has one of two layouts:

- feature-major `(F, T, B)`: its `(F, T*B)` reshape is the operand of the all-timestep GEMMs
  (weight gradients, read-out, loss);
- step-major `(T, F, B)`: each step is one contiguous `(F, B)` block, for the time loop.

`workspace.swap_leading` copies one into the other.
"""

from types import ModuleType

from charrnn.layers import gru, lstm, rnn

CELLS: dict[str, ModuleType] = {"rnn": rnn, "lstm": lstm, "gru": gru}
