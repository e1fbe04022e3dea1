"""Optional extras: imported only by the commands that need them, with one line on how to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from charrnn.errors import CharRNNError

PACKAGES = {
    "plot": "matplotlib",
    "export": "safetensors, onnx and onnxruntime",
    "torch": "PyTorch",
    "serve": "Starlette, uvicorn and prometheus_client",
    "tensorboard": "TensorBoard",
    "sweep": "Optuna",
    "wandb": "Weights & Biases' client",
}


def require(module: str, extra: str) -> ModuleType:
    """Import `module`, or fail with how to install the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CharRNNError(
            f"this needs {PACKAGES[extra]} (missing: {module.split('.')[0]}); install it with: "
            f"pip install 'charrnn[{extra}]'"
        ) from None
