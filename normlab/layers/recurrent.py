"""A wrapper of a recurrent layer that stands in for it where Keras expects
an RNN: inside ``keras.layers.Bidirectional``.

``Bidirectional(wrapper)`` rebuilds ``wrapper`` from its config twice, the
second time with ``go_backwards=True`` added to that config; it then reads
``go_backwards``, ``stateful``, ``return_sequences`` and ``return_state``
on both copies, calls them with ``initial_state=``, and resets their states
(``stateful=True``). :class:`RecurrentWrapper` gives a wrapper those
attributes and methods from the recurrent layer it wraps, and takes
``go_backwards`` in its config into that layer's.
"""

from __future__ import annotations

from typing import Any

import keras

from normlab.ops.validate import error_message


class RecurrentWrapper:
    """Mixin for a ``keras.layers.Wrapper`` that may wrap a ``keras.layers.RNN``
    (``is_rnn``): its ``go_backwards``, ``stateful``, ``return_sequences``,
    ``return_state``, ``states`` and ``reset_state`` are the wrapped layer's;
    a wrapper of another layer has none of them (``AttributeError``, so
    ``getattr(wrapper, name, default)`` works)."""

    layer: keras.layers.Layer
    _is_rnn: bool

    def _recurrent(self, name: str) -> keras.layers.RNN:
        if not self.__dict__.get("_is_rnn", False):
            raise AttributeError(
                f"{type(self).__name__} of {type(self.__dict__.get('layer')).__name__} has no attribute "
                f"{name!r}: it is the wrapped recurrent layer's (SimpleRNN, LSTM, GRU)")
        return self.layer

    @property
    def go_backwards(self) -> bool:
        """The wrapped recurrent layer's ``go_backwards``."""
        return bool(self._recurrent("go_backwards").go_backwards)

    @property
    def stateful(self) -> bool:
        """The wrapped recurrent layer's ``stateful``."""
        return bool(self._recurrent("stateful").stateful)

    @property
    def return_sequences(self) -> bool:
        """The wrapped recurrent layer's ``return_sequences``."""
        return bool(self._recurrent("return_sequences").return_sequences)

    @property
    def return_state(self) -> bool:
        """The wrapped recurrent layer's ``return_state``."""
        return bool(self._recurrent("return_state").return_state)

    @property
    def states(self) -> Any:
        """The wrapped recurrent layer's ``states`` (its state variables where ``stateful``)."""
        return self._recurrent("states").states

    def reset_state(self) -> None:
        """Resets the wrapped recurrent layer's states (``stateful=True``)."""
        self._recurrent("reset_state").reset_state()

    def reset_states(self) -> None:
        """Alias of :meth:`reset_state`, as Keras' RNN layers have."""
        self.reset_state()

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> Any:
        config = dict(config)
        if "go_backwards" in config:  # Bidirectional's backward copy: the wrapped RNN runs backwards
            go_backwards = config.pop("go_backwards")
            layer = config.get("layer")
            inner = layer.get("config") if isinstance(layer, dict) else None
            if not isinstance(layer, dict) or not isinstance(inner, dict) or "go_backwards" not in inner:
                name = layer.get("class_name") if isinstance(layer, dict) else type(layer).__name__
                raise ValueError(
                    error_message(
                        "go_backwards",
                        f"a {cls.__name__} of a recurrent layer (SimpleRNN, LSTM, GRU), the layer "
                        "go_backwards is passed on to (keras.layers.Bidirectional adds it to the config)",
                        f"go_backwards={go_backwards!r} in the config of a {cls.__name__} of {name}",
                        "Wrap a recurrent layer to use the wrapper in keras.layers.Bidirectional, "
                        "or remove go_backwards from the config.",
                    )
                )
            config["layer"] = {**layer, "config": {**inner, "go_backwards": go_backwards}}
        return super().from_config(config, custom_objects)  # type: ignore[misc]
