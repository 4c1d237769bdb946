"""The shared-statistics masks behind the cube figure match each norm's definition."""

import numpy as np
import pytest

from normlab import viz

N, C, H, W = 3, 4, 2, 2


def expected(norm):
    mask = np.zeros((N, C, H * W), bool)
    if norm == "batch":
        mask[:, 0, :] = True
    elif norm == "layer(axis=[1, 2, 3])":
        mask[0] = True
    elif norm == "instance":
        mask[0, 0] = True
    elif norm == "group(groups=2)":
        mask[0, :2] = True
    elif norm == "layer":  # axis=-1: one position's channels
        mask[0, :, 0] = True
    return mask


@pytest.mark.parametrize("norm", ["batch", "layer(axis=[1, 2, 3])", "instance", "group(groups=2)", "layer"])
def test_shared_statistics(norm):
    got = viz.shared_statistics(norm, batch=N, channels=C, height=H, width=W)
    np.testing.assert_array_equal(got, expected(norm))


def test_cube_figure_renders(tmp_path):
    fig = viz.cube_figure(["batch", "group(groups=2)"], batch=N, channels=C, height=H, width=W)
    path = tmp_path / "cube.png"
    fig.savefig(path, dpi=40)
    assert path.stat().st_size > 1000


def test_one_norm_is_one_panel_and_bad_arguments_are_named():
    """A spec string was iterated letter by letter ("unknown norm 'b'"); no norms drew an empty
    figure; an element outside the block raised NumPy's IndexError."""
    assert len(viz.cube_figure("batch", batch=N, channels=C, height=H, width=W).axes) == 1
    with pytest.raises(ValueError, match=r"Invalid `norms`: expected at least one layer or spec string"):
        viz.cube_figure([])
    with pytest.raises(ValueError, match=r"Invalid `element`: expected \(sample, channel\), two ints within "
                                         r"batch=4 and channels=6\. Received: element=\(9, 0\)"):
        viz.shared_statistics("instance", element=(9, 0))


@pytest.mark.parametrize("kwargs, match", [
    (dict(height=0), r"Invalid `height`: expected a positive integer\. Received: height=0"),
    (dict(channels=2.5), r"Invalid `channels`: .*Received: channels=2\.5"),
    (dict(batch=True), r"Invalid `batch`: .*Received: batch=True"),
    (dict(batch=-1), r"Invalid `batch`: .*Received: batch=-1"),  # was blamed on `element`
    (dict(element=(0, 0, 0)), r"Invalid `element`: .*Received: element=\(0, 0, 0\)"),
    (dict(element=(0.5, 0)), r"Invalid `element`: .*Received: element=\(0\.5, 0\)"),
    (dict(seed="a"), r"Invalid `seed`: expected an int >= 0\. Received: seed='a'"),
])
def test_bad_block_sizes_element_and_seed_are_named(kwargs, match):
    """Each raised a bare IndexError or TypeError from NumPy, or named another argument."""
    with pytest.raises(ValueError, match=match):
        viz.shared_statistics("instance", **kwargs)


def test_missing_matplotlib_names_the_lab_extra(monkeypatch):
    import sys

    from normlab.lab.errors import MissingDependency

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    with pytest.raises(MissingDependency, match=r"the lab needs matplotlib .*pip install 'normlab\[lab\]'"):
        viz.cube_figure(["batch"], batch=N, channels=C, height=H, width=W)


def test_viz_uses_no_test_helper():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(viz))
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in modules if m and m.startswith("normlab.testing")}


def test_a_layer_given_is_left_unchanged():
    # A training call on the given layer moved its moving statistics (and on JAX left tracers in them).
    import keras

    import normlab

    layer = normlab.BatchNormalization()
    layer.build((1, H, W, C))
    viz.shared_statistics(layer, batch=N, channels=C, height=H, width=W)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.moving_variance), np.ones(C))
    layer(np.ones((1, H, W, C), "float32"))  # still usable
