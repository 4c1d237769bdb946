"""Every use of a private Keras API, fenced in one place.

Keras 3 keeps some mechanisms normlab needs out of its public namespace.
Each is wrapped here, with what it is for; nothing else in normlab imports
``keras.src``. Checked against Keras 3.15.1 (the tests run every wrapper on
all three backends, so a Keras release that moves one fails loudly here).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import keras

from normlab.types import DTypeLike

#: The Keras release these private imports were checked against.
CHECKED_KERAS_VERSION = "3.15.1"


def in_stateless_scope() -> bool:
    """Whether Keras runs the layer statelessly (JAX ``fit``/``predict``:
    assignments made in the forward pass to trainable weights are dropped)."""
    from keras.src.backend.common.stateless_scope import in_stateless_scope as inside

    return inside()


def check_input_spec(layer: keras.layers.Layer, inputs: Any) -> None:
    """Raises Keras' own error where ``inputs`` do not fit ``layer.input_spec``,
    the check its ``__call__`` makes (for a call that sets the spec aside)."""
    from keras.src.layers.input_spec import assert_input_compatibility

    assert_input_compatibility(layer.input_spec, inputs, layer.name)


def in_symbolic_scope() -> bool:
    """Whether Keras runs the layer only to infer output shapes (symbolic tensors)."""
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope as inside

    return inside()


def torch_device() -> str:
    """The device Keras' torch backend puts tensors on: a ``keras.device``
    scope's, else its default (``"cuda"`` where there is one, ``"cpu"``)."""
    from keras.src.backend.torch.core import get_device

    return str(get_device())


def autocast_scope(dtype: DTypeLike | None) -> AbstractContextManager[Any]:
    """Keras' ``AutocastScope``: inside it, float variables read as ``dtype``
    (None: in their own dtype)."""
    from keras.src.backend import AutocastScope

    return AutocastScope(dtype)


def own_dtype(variable: Any) -> str:
    """A variable's own dtype, whatever autocast scope is active (inside one,
    ``Variable.dtype`` reports the scope's dtype)."""
    return keras.backend.standardize_dtype(getattr(variable, "_dtype", None) or variable.dtype)


def legacy_model_from_config(
    config: dict[str, Any], custom_objects: dict[str, Any], *, legacy_scope: bool = False
) -> keras.Model:
    """Keras' loader for TF-Keras 2 configs (no ``module`` keys), which Keras 3
    keeps for ``.h5`` files only; ``legacy_scope`` reads whole model configs."""
    from keras.src.legacy.saving import saving_options, saving_utils

    if not legacy_scope:
        return saving_utils.model_from_config(config, custom_objects=custom_objects)
    with saving_options.keras_option_scope(use_legacy_config=True):
        return saving_utils.model_from_config(config, custom_objects=custom_objects)


def compute_output_spec(fn: Any, *args: Any) -> Any:
    """The outputs (as ``KerasTensor``s) of ``fn`` on the symbolic tensors
    ``args``: Keras' shape inference, run as for a layer's ``call``."""
    from keras.src.backend import compute_output_spec as infer

    return infer(fn, *args)


def auto_name(base: str) -> str:
    """A name Keras has not given out yet: ``base``, ``base_1``, ..."""
    from keras.src.utils.naming import auto_name as name

    return str(name(base))


def keras_global_state() -> tuple[Any, Any]:
    """Keras' global state (layer-name counters, the seed ``keras.utils.set_random_seed``
    stored, the global dtype policy): the two holders ``keras.backend.clear_session``
    replaces with fresh ones, for :func:`restore_keras_global_state`."""
    from keras.src.backend.common import global_state

    return global_state.GLOBAL_STATE_TRACKER, global_state.GLOBAL_SETTINGS_TRACKER


def restore_keras_global_state(state: tuple[Any, Any] | None) -> None:
    """Puts back what :func:`keras_global_state` returned (None: a fresh state, as
    right after ``import keras``)."""
    import threading

    from keras.src.backend.common import global_state

    trackers = state or (threading.local(), threading.local())
    global_state.GLOBAL_STATE_TRACKER, global_state.GLOBAL_SETTINGS_TRACKER = trackers


def set_own_trainable(layer: keras.layers.Layer, trainable: bool) -> None:
    """Sets ``layer``'s own ``trainable`` flag without the setter's propagation to
    its sublayers and variables (which keep their own state)."""
    layer._trainable = bool(trainable)
