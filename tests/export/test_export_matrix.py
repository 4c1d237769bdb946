"""The export matrix: every layer in :func:`normlab.registry`, exported every
way Keras 3.15 offers on the backend under test, run in the runtime that
serves the artifact, matches eager inference within 1e-5 (float32, relative
to the larger of 1 and the output's largest magnitude).

One cell per (route, layer); the routes and the runtimes are in
``_formats.py``, the layers and their models in ``_cases.py``. To keep CI
short, each route exports once per backend a single model holding every
layer in parallel branches (``exports`` below), and each cell compares its
own branch; a layer is exported in its own small model only when the
combined export fails, when it is a known failure (``_known.py``: strict
xfails with the converter's error class and message), or when it would
send the combined export down another path. Missing runtimes skip.

``test_keras_backend_matches_eager`` runs the ``.keras`` files on Keras'
``numpy`` and ``openvino`` backends, one subprocess per backend, once (in
the torch run). Every cell's outcome goes to a JSON file (see
``conftest.py``) that ``docs/scripts/deploy_matrix.py`` renders into
docs/deploying.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.export import _cases, _formats, _known

BACKEND = keras.backend.backend()
ROOT = pathlib.Path(__file__).resolve().parents[2]
ATOL = 1e-5
ROUTES_HERE = [route for route in _formats.ROUTES if BACKEND in route.backends]
#: Keras backends that only run inference: the .keras files are loaded there in a subprocess.
KERAS_BACKENDS = {
    "numpy": (("jax", "Keras' numpy backend runs convolutions with jax.lax"),),
    "openvino": (("openvino", "Keras' openvino backend"),),
}


def _eager(model, x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


@dataclasses.dataclass
class Combined:
    """One route's export of the model holding ``cases``: outputs per case, or the error."""

    cases: list[str]
    expected: dict[str, np.ndarray]
    got: dict[str, np.ndarray] | None
    error: BaseException | None


class Exports:
    """Each route's combined export, made on first use and kept for the module."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._done: dict[str, Combined] = {}
        self.full = _cases.full_model()

    def get(self, route: _formats.Route) -> Combined:
        if route.id not in self._done:
            alone = _known.exported_alone(BACKEND, route.id)
            cases = [c for c in _cases.CASES if c.id not in alone and not _known.known(BACKEND, route.id, c.id)]
            model = _cases.branches(self.full, cases)
            x = _cases.inputs()
            expected = _cases.split(_eager(model, x), cases)
            try:
                got = _cases.split(route.run(model, x, str(self._tmp.mktemp(route.id))), cases)
                self._done[route.id] = Combined([c.id for c in cases], expected, got, None)
            except Exception as exc:  # each cell exports its own layer then
                self._done[route.id] = Combined([c.id for c in cases], expected, None, exc)
        return self._done[route.id]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return Exports(tmp_path_factory)


def _cell(request, route: str, case: _cases.Case) -> dict:
    """Registers the test as the matrix cell (route, case); returns the dict its results go in."""
    request.node.user_properties.append(("export_cell", {
        "id": f"{route}/{case.id}", "route": route, "case": case.id, "spec": case.spec, "backend": BACKEND}))
    result: dict = {}
    request.node.user_properties.append(("export_result", result))
    return result


def _compare(result: dict, got, expected, what: str) -> None:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape, f"{what}: output shape {got.shape}, eager {expected.shape}"
    assert np.isfinite(got).all(), f"{what}: non-finite outputs"
    diff = float(np.max(np.abs(got - expected)))
    tolerance = ATOL * max(1.0, float(np.max(np.abs(expected))))
    result.update(max_abs_diff=diff, tolerance=tolerance)
    assert diff <= tolerance, f"{what}: differs from eager by {diff:.3g} (tolerance {tolerance:.3g})"


def _expect(result: dict, known: _known.Known | None, run):
    """``run()``, recording its error; a known failure must fail with its own message."""
    try:
        return run()
    except Exception as exc:
        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        result.update(error=name, message=str(exc).strip()[:2000])
        if known is not None and known.match not in str(exc):
            raise AssertionError(f"expected {known.error} saying {known.match!r}; got {name}: {exc}") from exc
        raise


# --------------------------------------------------------------------------
# model.export, torch.export, jax.export


def _cell_params():
    params = []
    for route in ROUTES_HERE:
        for case in _cases.CASES:
            known = _known.known(BACKEND, route.id, case.id)
            marks = []
            if known is not None and route.missing() is None:
                marks.append(pytest.mark.xfail(raises=known.error_class(), reason=known.reason(), strict=True))
            params.append(pytest.param(route.id, case.id, id=f"{route.id}-{case.id}", marks=marks))
    return params


@pytest.mark.parametrize("route_id, case_id", _cell_params())
def test_export_matches_eager(route_id, case_id, exports, request, tmp_path):
    route, case = _formats.BY_ID[route_id], _cases.BY_ID[case_id]
    result = _cell(request, route_id, case)
    route.require()
    failure = _known.route_failure(BACKEND, route_id)
    if failure is not None:
        pytest.xfail(f"{failure.reason()} (test_route_fails_for_any_model: a model without normlab layers fails too)")
    combined = exports.get(route)
    if combined.got is not None and case_id in combined.got:
        result["exported"] = "combined"
        _compare(result, combined.got[case_id], combined.expected[case_id], f"{route_id}, {case_id}")
        return
    result["exported"] = "alone"
    if case_id in _known.exported_alone(BACKEND, route_id):
        result["note"] = f"Exported alone: {_known.exported_alone(BACKEND, route_id)[case_id]}"
    if combined.error is not None:
        result["combined_error"] = f"{type(combined.error).__name__}: {str(combined.error)[:300]}"
    model, x = _cases.branches(exports.full, [case]), _cases.inputs()
    expected = _eager(model, x)
    got = _expect(result, _known.known(BACKEND, route_id, case_id), lambda: route.run(model, x, str(tmp_path)))
    _compare(result, got, expected, f"{route_id}, {case_id} (alone)")


@pytest.mark.parametrize("route_id", [route.id for route in ROUTES_HERE])
def test_combined_export_works(route_id, exports):
    """The one export per route holds every layer that works alone: a failure here and none in
    the cells means layers that export alone fail together (as LRN and weight norm on torch's
    ONNX path, see _known.EXPORTED_ALONE)."""
    route = _formats.BY_ID[route_id]
    route.require()
    if _known.route_failure(BACKEND, route_id):
        pytest.skip("the route fails for any model here (see test_route_fails_for_any_model)")
    error = exports.get(route).error
    assert error is None, f"the combined {route_id} export failed: {type(error).__name__}: {error}"


def _route_failure_params():
    return [
        pytest.param(route.id, marks=pytest.mark.xfail(
            raises=failure.error_class(), reason=failure.reason(), strict=True))
        for route in ROUTES_HERE
        if (failure := _known.route_failure(BACKEND, route.id)) is not None and route.missing() is None
    ]


@pytest.mark.parametrize("route_id", _route_failure_params())
def test_route_fails_for_any_model(route_id, tmp_path):
    """A route known to fail on this backend fails for a model without normlab layers too."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(_cases.INPUT_SHAPE)
    model = keras.Model(inputs, keras.layers.Flatten()(keras.layers.Conv2D(_cases.CHANNELS, 3)(inputs)))
    x = _cases.inputs()
    expected = _eager(model, x)
    failure = _known.route_failure(BACKEND, route_id)
    got = _expect({}, failure, lambda: _formats.BY_ID[route_id].run(model, x, str(tmp_path)))
    _compare({}, got, expected, route_id)


# --------------------------------------------------------------------------
# Keras' numpy and openvino backends, from .keras files


class OtherBackends:
    """The models saved as .keras here, run on each other backend in a subprocess, once."""

    def __init__(self, directory: pathlib.Path, model: keras.Model):
        self.directory = directory
        self._ran: dict[str, dict] = {}
        x = _cases.inputs()
        self.expected = _cases.split(_eager(model, x), _cases.CASES)
        model.save(directory / "combined.keras")
        for case in _cases.CASES:  # each branch alone, for when the combined file fails to load or run
            _cases.branches(model, [case]).save(directory / f"{case.id}.keras")
        np.save(directory / "inputs.npy", x)
        (directory / "manifest.json").write_text(json.dumps({
            "combined": [c.id for c in _cases.CASES], "cases": [c.id for c in _cases.CASES],
            "branch_size": _cases.BRANCH_SIZE}))

    def run(self, backend: str) -> dict:
        if backend not in self._ran:
            env = {**os.environ, "KERAS_BACKEND": backend}
            done = subprocess.run([sys.executable, "-m", "tests.export._backend_worker", str(self.directory)],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise RuntimeError(f"the {backend} worker failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            report = json.loads((self.directory / f"{backend}.json").read_text())
            with np.load(self.directory / f"{backend}.npz") as outputs:
                report["outputs"] = {name: outputs[name] for name in outputs.files}
            self._ran[backend] = report
        return self._ran[backend]


@pytest.fixture(scope="module")
def other_backends(tmp_path_factory, exports):
    return OtherBackends(tmp_path_factory.mktemp("keras_files"), exports.full)


@pytest.mark.once  # the .keras files are saved on torch; the other backends run in subprocesses
@pytest.mark.slow
@pytest.mark.parametrize("backend", list(KERAS_BACKENDS))
@pytest.mark.parametrize("case_id", _cases.IDS)
def test_keras_backend_matches_eager(backend, case_id, other_backends, request):
    case = _cases.BY_ID[case_id]
    result = _cell(request, f"{backend}-backend", case)
    for module, what in KERAS_BACKENDS[backend]:
        pytest.importorskip(module, reason=f"{module} is not installed: {what}")
    report = other_backends.run(backend)
    if case_id in report["errors"]:
        error = report["errors"][case_id]
        result.update(exported="alone", error=error["error"], message=error["message"][:2000])
        raise RuntimeError(f"{backend} backend: {error['error']}: {error['message']}")
    result["exported"] = "combined" if report["combined_error"] is None else "alone"
    _compare(result, report["outputs"][case_id], other_backends.expected[case_id], f"{backend} backend, {case_id}")


def test_every_registered_norm_has_a_case():
    assert not _cases.uncovered_names(), (
        f"add {sorted(_cases.uncovered_names())} to tests/export/_cases.py CASES (and regenerate docs/deploying.md)")
