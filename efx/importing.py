"""Importing TensorFlow, by one thread at a time: the one place every module that needs it
asks (efx.model, efx.openvino_model, the engines), so that none of them imports another to
reach it."""

from __future__ import annotations

import threading
from typing import Any

_TENSORFLOW = threading.Lock()


def tensorflow() -> Any:
    """`import tensorflow`, by one thread at a time. efx imports it in a thread of its own
    while the model loads (efx.engine); two threads inside TensorFlow's __init__ at once can
    meet each other's partly imported modules (Python's import locks break the cycle by handing
    one of them a module without its attributes): every other import of TensorFlow while that
    thread may run (a GPU to list, a handle to resolve, a conversion) comes through here."""
    with _TENSORFLOW:
        import tensorflow as tf
    return tf
