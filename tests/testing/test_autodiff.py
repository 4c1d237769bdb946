"""normlab.testing.autodiff agrees across backends, unconnected arguments included."""

import numpy as np

from normlab.testing.autodiff import finite_differences, gradients


def test_an_argument_the_output_ignores_gets_zeros_on_every_backend():
    # torch left its .grad at None (an AttributeError) and TensorFlow returned None.
    x = np.arange(6, dtype="float32").reshape(2, 3)
    w = np.ones(3, "float32")
    dx, dw = gradients(lambda a, b: a * 2.0, [x, w], np.ones((2, 3), "float32"))
    np.testing.assert_array_equal(dx, np.full((2, 3), 2.0))
    np.testing.assert_array_equal(dw, np.zeros(3))
    fx, fw = finite_differences(lambda a, b: a * 2.0, [x, w], np.ones((2, 3)))
    np.testing.assert_allclose(fx, dx, atol=1e-6)
    np.testing.assert_array_equal(fw, dw)
