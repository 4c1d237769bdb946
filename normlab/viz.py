"""Pictures of which elements share one mean and variance, drawn by asking the norm itself.

The classic figure of the Group Normalization paper shows an N x C x (H, W)
block per norm with the elements that share statistics shaded. Here the
shading is not drawn by hand: for a layer (or spec string such as
``"group(groups=4)"``) the picked element's output is differentiated with
respect to the whole input, and every input element whose gradient is
more than 1e-6 of the largest is one whose value enters that element's
statistics. Any norm of the registry's ``"activation"`` kind, including
ones written later, can be drawn this way (not the kernel wrappers, nor
AdaIN, which takes two inputs). Two limits follow from asking the gradient: a dependence
weaker than that bound is not shaded (local response norm's neighbours
with its default ``alpha``), and a norm that takes a ``max`` (EvoNorm-B0)
shows only the branch this input selects. A layer given is left as it is:
the figure is drawn with a fresh copy from its config.
Drawing needs matplotlib (``pip install 'normlab[lab]'``).

Example:
    >>> import numpy as np
    >>> from normlab import viz
    >>> shared = viz.shared_statistics("group(groups=2)", batch=3, channels=4, height=2, width=2)
    >>> shared.shape, int(shared.sum())          # sample 0, channels 0-1, all 4 positions
    ((3, 4, 4), 8)
    >>> fig = viz.cube_figure(["batch", "layer", "instance", "group(groups=2)"], channels=4)
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from normlab.ops.validate import check_positive_int

if TYPE_CHECKING:  # for annotations only: matplotlib stays optional (cube_figure imports it)
    import keras
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d.axes3d import Axes3D


def _layer(norm: str | keras.layers.Layer) -> keras.layers.Layer:
    """A fresh layer: from a spec string, or a copy of a layer's config (a training
    call would update the given layer's moving statistics, and on JAX leak tracers into them)."""
    if isinstance(norm, str):
        from normlab.registry import get

        return get(norm)
    return type(norm).from_config(norm.get_config())


def _call(layer: keras.layers.Layer, x: Any) -> Any:
    if "training" in inspect.signature(layer.call).parameters:
        return layer(x, training=True)  # batch-dependent norms show their training statistics
    return layer(x)


def shared_statistics(norm: str | keras.layers.Layer, *, batch: int = 4, channels: int = 6, height: int = 2,
                      width: int = 3, element: tuple[int, int] = (0, 0), seed: int = 0) -> np.ndarray:
    """Which input elements share statistics with one element, as an ``(N, C, H*W)`` mask.

    Args:
        norm: a layer (a copy of its config is drawn; the layer is left
            unchanged), or a spec string for :func:`normlab.get`. It sees a
            channels-last input of shape ``(batch, height, width, channels)``.
        batch: N. Default 4.
        channels: C. Default 6.
        height: H. Default 2.
        width: W. Default 3.
        element: ``(sample, channel)`` of the picked element (at position 0). Default (0, 0).
        seed: seed of the random input. Default 0.

    Returns:
        A boolean array of shape ``(batch, channels, height * width)``.
    """
    sizes = dict(batch=batch, channels=channels, height=height, width=width)
    batch, channels, height, width = (check_positive_int(k, v, example=4) for k, v in sizes.items())
    if not (isinstance(element, (tuple, list)) and len(element) == 2
            and all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in element)
            and 0 <= element[0] < batch and 0 <= element[1] < channels):
        raise ValueError(
            f"Invalid `element`: expected (sample, channel), two ints within batch={batch} and "
            f"channels={channels}. Received: element={element!r}. Pick e.g. element=(0, 0).")
    sample, channel = element
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"Invalid `seed`: expected an int >= 0. Received: seed={seed!r}. Pass e.g. seed=0.")
    layer = _layer(norm)
    x = np.random.default_rng(seed).normal(size=(batch, height, width, channels)).astype("float32")
    _call(layer, x)  # build
    cotangent = np.zeros(x.shape, "float32")
    cotangent[sample, 0, 0, channel] = 1.0
    grad = _input_gradient(lambda v: _call(layer, v), x, cotangent)
    grad = np.abs(np.asarray(grad, dtype=np.float64))
    mask = grad > 1e-6 * grad.max()
    mask[sample, 0, 0, channel] = True
    return mask.transpose(0, 3, 1, 2).reshape(batch, channels, height * width)


def _input_gradient(fn: Callable[[Any], Any], x: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
    """The gradient of ``sum(fn(x) * cotangent)`` with respect to ``x``, on the active backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        return np.asarray(jax.grad(lambda v: jnp.sum(fn(v).astype("float32") * cotangent))(
            jnp.asarray(x)))
    if backend == "tensorflow":
        import tensorflow as tf

        variable = tf.Variable(x)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(fn(variable), "float32") * cotangent)
        return tape.gradient(loss, variable).numpy()
    if backend == "torch":
        import torch

        tensor = torch.tensor(x, requires_grad=True, device=keras.ops.zeros(()).device)  # on Keras' device
        out = fn(tensor).float()
        (out * torch.as_tensor(cotangent, device=out.device)).sum().backward()
        if tensor.grad is None:  # the output does not depend on the input
            return np.zeros_like(x)
        return tensor.grad.cpu().numpy()
    raise NotImplementedError(f"normlab.viz does not support the {backend!r} backend. "
                              f"Received: backend={backend!r}. Use jax, tensorflow or torch.")


def _title(norm: str | keras.layers.Layer) -> str:
    if isinstance(norm, str):
        return norm
    return type(norm).__name__


def draw_cube(ax: Axes3D, mask: np.ndarray, title: str = "", color: str = "#4C72B0") -> None:
    """Draws an ``(N, C, HW)`` mask as a block of cubes on a 3-D matplotlib axis."""
    n, c, s = mask.shape
    filled = np.ones((n, c, s), bool)  # x: N, y: C, z: H*W, as in the Group Normalization paper
    colors = np.empty(filled.shape, object)
    colors[:] = "#F2F2F2"
    colors[mask] = color
    ax.voxels(filled, facecolors=colors, edgecolors="#555555", linewidth=0.3)
    ax.set_xlabel("N")
    ax.set_ylabel("C")
    ax.set_zlabel("H, W")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_zticks([])
    ax.set_box_aspect((n, c, s))
    ax.view_init(elev=20, azim=-50)
    ax.set_title(title)


def cube_figure(norms: str | keras.layers.Layer | Iterable[str | keras.layers.Layer], *, batch: int = 4,
                channels: int = 6, height: int = 2, width: int = 3) -> Figure:
    """One panel per norm, each shading the elements that share one mean and variance.

    Args:
        norms: layers or spec strings, e.g. ``["batch", "layer", "instance", "group(groups=2)"]``
            (one alone is one panel).
        batch, channels, height, width: the input block drawn. Defaults 4, 6, 2, 3.

    Returns:
        A matplotlib ``Figure`` (Agg, no display needed); save it with ``fig.savefig``.

    Raises:
        MissingDependency: matplotlib is not installed (``pip install 'normlab[lab]'``).
    """
    from normlab.lab.errors import require

    require("matplotlib")
    from matplotlib.figure import Figure

    norms = [norms] if isinstance(norms, str) or hasattr(norms, "get_config") else list(norms)  # one norm
    if not norms:
        raise ValueError("Invalid `norms`: expected at least one layer or spec string. Received: norms=[]. "
                         "Pass e.g. norms=['batch', 'group(groups=2)'].")
    fig = Figure(figsize=(3.2 * len(norms), 3.4))
    for i, norm in enumerate(norms):
        ax = fig.add_subplot(1, len(norms), i + 1, projection="3d")
        mask = shared_statistics(norm, batch=batch, channels=channels, height=height, width=width)
        draw_cube(ax, mask, _title(norm))
    fig.tight_layout()
    return fig
