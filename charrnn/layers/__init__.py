"""The numeric engine: recurrent cells, projections and the loss, in plain numpy.

Every array is time-major, `(T, B, ...)`, and every product uses row vectors (`x @ W`).
"""

from types import ModuleType

from charrnn.layers import gru, lstm, rnn

CELLS: dict[str, ModuleType] = {"rnn": rnn, "lstm": lstm, "gru": gru}
