"""A WeightNormalization of a recurrent layer inside keras.layers.Bidirectional,
with initial states and stateful layers, against plain Keras RNNs given the
normalized recurrent kernel."""

import os
import tempfile

import keras
import numpy as np
import pytest
from keras import ops

import normlab

SEQ = np.random.default_rng(7).normal(size=(3, 5, 3)).astype("float32")  # (batch, time, features)
UNITS = 4


def normalized(wrapper):
    """The wrapped RNN's weights with ``w = g * v / ||v||`` as its recurrent kernel, in float64."""
    cell = wrapper.layer.cell
    kernel, recurrent, bias = (ops.convert_to_numpy(w).astype(np.float64)
                               for w in (cell.kernel, cell.recurrent_kernel, cell.bias))
    g = ops.convert_to_numpy(wrapper.g).astype(np.float64)
    return [kernel, g * recurrent / np.linalg.norm(recurrent, axis=0), bias]


def plain_twin(wrapper, **options):
    """A plain Keras RNN of the wrapped layer's kind and options, holding the wrapper's normalized kernel."""
    rnn = wrapper.layer
    twin = type(rnn)(UNITS, go_backwards=rnn.go_backwards, return_sequences=rnn.return_sequences,
                     return_state=rnn.return_state, **options)
    twin.build(SEQ.shape)
    twin.set_weights([w.astype("float32") for w in normalized(wrapper)])
    return twin


@pytest.mark.parametrize("data_init", [False, True])
@pytest.mark.parametrize("options", [{}, {"return_sequences": True}, {"return_state": True},
                                     {"return_sequences": True, "return_state": True}],
                         ids=["last", "sequences", "state", "sequences+state"])
def test_bidirectional_runs_both_directions_with_the_normalized_kernel(options, data_init):
    """``Bidirectional(WeightNormalization(LSTM))`` failed: "Unrecognized keyword
    arguments passed to WeightNormalization: {'go_backwards': True}"."""
    wrapper = normlab.WeightNormalization(keras.layers.LSTM(UNITS, **options), data_init=data_init)
    bidirectional = keras.layers.Bidirectional(wrapper)
    outputs = keras.tree.flatten(bidirectional(SEQ))
    forward, backward = bidirectional.forward_layer, bidirectional.backward_layer
    assert (forward.go_backwards, backward.go_backwards) == (False, True)
    assert isinstance(backward, normlab.WeightNormalization) and backward.layer.go_backwards
    assert len(outputs) == (5 if options.get("return_state") else 1)
    y = keras.tree.flatten(plain_twin(forward)(SEQ))
    y_reversed = keras.tree.flatten(plain_twin(backward)(SEQ))
    last = ops.convert_to_numpy(y_reversed[0])
    if options.get("return_sequences"):
        last = last[:, ::-1]  # Bidirectional puts the backward outputs in time order
    expected = np.concatenate([ops.convert_to_numpy(y[0]), last], axis=-1)
    # (the twin's kernel is normalized in float64: a few float32 roundings apart, g up to 1 / std with data_init)
    np.testing.assert_allclose(ops.convert_to_numpy(outputs[0]), expected, rtol=1e-4, atol=1e-5)
    if options.get("return_state"):  # the forward layer's h and c, then the backward layer's
        for got, want in zip(outputs[1:], y[1:] + y_reversed[1:]):
            np.testing.assert_allclose(ops.convert_to_numpy(got), ops.convert_to_numpy(want), rtol=1e-4, atol=1e-5)


def test_initial_state_reaches_the_rnn_and_its_data_init():
    state = np.random.default_rng(8).normal(size=(3, UNITS)).astype("float32")
    wrapper = normlab.WeightNormalization(keras.layers.GRU(UNITS), data_init=False)
    y = ops.convert_to_numpy(wrapper(SEQ, initial_state=[state]))
    np.testing.assert_allclose(y, ops.convert_to_numpy(plain_twin(wrapper)(SEQ, initial_state=[state])), atol=1e-6)
    assert np.abs(y - ops.convert_to_numpy(wrapper(SEQ))).max() > 1e-3  # the state made a difference

    # data_init: g is 1 / std of the outputs with g = 1, taken from the given initial state
    wrapper = normlab.WeightNormalization(keras.layers.GRU(UNITS, bias_initializer="random_normal"))
    wrapper.build(SEQ.shape)
    direction = keras.layers.GRU(UNITS)
    direction.build(SEQ.shape)
    kernel, recurrent, bias = normalized(wrapper)  # g = 1 before the first call
    direction.set_weights([w.astype("float32") for w in (kernel, recurrent, bias)])
    t = ops.convert_to_numpy(direction(SEQ, initial_state=[state])).astype(np.float64)
    with pytest.warns(UserWarning, match="recurrent layer"):
        wrapper(SEQ, initial_state=[state])
    expected_g = np.tile(1.0 / np.sqrt(t.var(axis=0) + 1e-10), 3)
    np.testing.assert_allclose(ops.convert_to_numpy(wrapper.g), expected_g, rtol=1e-4)


def test_stateful_bidirectional_keeps_and_resets_the_wrapped_states():
    bidirectional = keras.layers.Bidirectional(
        normlab.WeightNormalization(keras.layers.SimpleRNN(UNITS, stateful=True), data_init=False))
    first = ops.convert_to_numpy(bidirectional(SEQ))
    assert bidirectional.forward_layer.stateful and len(bidirectional.states) == 2
    assert np.abs(ops.convert_to_numpy(bidirectional(SEQ)) - first).max() > 1e-4  # carried over
    bidirectional.reset_state()
    np.testing.assert_allclose(ops.convert_to_numpy(bidirectional(SEQ)), first, atol=1e-6)


def test_a_model_with_a_bidirectional_wrapper_trains_saves_and_loads():
    inputs = keras.Input(SEQ.shape[1:])
    wrapped = normlab.WeightNormalization(keras.layers.GRU(2, return_sequences=True), data_init=False)
    model = keras.Model(inputs, keras.layers.Bidirectional(wrapped)(inputs))
    model.compile("sgd", "mse")
    model.fit(SEQ, np.zeros((3, 5, 4), "float32"), epochs=1, verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bidirectional.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(SEQ, verbose=0), model.predict(SEQ, verbose=0))
    assert loaded.layers[1].backward_layer.layer.go_backwards


def test_rnn_attributes_belong_to_a_wrapped_rnn_only():
    dense = normlab.WeightNormalization(keras.layers.Dense(2))
    for name in ("go_backwards", "stateful", "return_sequences", "return_state", "states"):
        assert not hasattr(dense, name)
    rnn = normlab.WeightNormalization(keras.layers.LSTM(2, return_sequences=True, go_backwards=True))
    assert (rnn.go_backwards, rnn.stateful, rnn.return_sequences, rnn.return_state) == (True, False, True, False)
    with pytest.raises(ValueError, match=r"Invalid `go_backwards`.*WeightNormalization of Dense.*Wrap a recurrent"):
        keras.layers.Bidirectional(dense)
    with pytest.raises(ValueError, match=r"Invalid `initial_state`.*WeightNormalization of Dense"):
        dense(SEQ, initial_state=[np.zeros((3, 2), "float32")])


@pytest.mark.parametrize("return_sequences", [False, True])
def test_a_wrapped_rnn_gives_the_output_mask_the_rnn_gives(return_sequences):
    """A sequence mask reaches the outputs only where they are a sequence: an RNN's last
    output (return_sequences=False) has no steps, so no mask; its sequence keeps the input's."""
    inputs = keras.Input((4,), dtype="int32")
    embedded = keras.layers.Embedding(6, 3, mask_zero=True)(inputs)
    wrapped = normlab.WeightNormalization(keras.layers.SimpleRNN(2, return_sequences=return_sequences))(embedded)
    plain = keras.layers.SimpleRNN(2, return_sequences=return_sequences)(embedded)
    mask, expected = getattr(wrapped, "_keras_mask", None), getattr(plain, "_keras_mask", None)
    assert (mask is None) == (expected is None) == (not return_sequences)
    if return_sequences:
        assert tuple(mask.shape) == tuple(expected.shape) == (None, 4)
