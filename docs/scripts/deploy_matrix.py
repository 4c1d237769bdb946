"""Writes the export matrix into docs/deploying.md, from the export tests' result files.

The matrix is never typed by hand. ``tests/export`` records every cell (layer x
export route, on the backend under test) to ``$NORMLAB_EXPORT_RESULTS/<backend>.json``;
this script renders those files into the page, between the markers

    <!-- deploy-matrix -->
    ...
    <!-- /deploy-matrix -->

    python docs/scripts/deploy_matrix.py --run          # run tests/export on each backend, then write the page
    python docs/scripts/deploy_matrix.py DIR            # print the tables rendered from DIR/<backend>.json
    python docs/scripts/deploy_matrix.py DIR --write    # ... and write them into docs/deploying.md
    python docs/scripts/deploy_matrix.py DIR --check    # exit 1 if the page differs from DIR

``--run`` takes a few minutes (the backends run one after the other, each in
its own process, as scripts/test-backends.sh does).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "deploying.md"
BACKENDS = ("tensorflow", "jax", "torch")
TITLES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
ROUTE_TITLES = {
    "tf_saved_model": "SavedModel",
    "onnx": "ONNX",
    "openvino": "OpenVINO IR",
    "onnx+openvino": "ONNX in OpenVINO",
    "litert": "LiteRT",
    "torch": "ExportedProgram (`.pt2`)",
    "torch.export": "`torch.export`",
    "jax.export": "`jax.export`",
}
#: Cells that run the .keras files on another Keras backend (once, in one backend's run).
KERAS_BACKEND_ROUTES = {"numpy-backend": "numpy backend", "openvino-backend": "openvino backend"}
ENV = "NORMLAB_EXPORT_RESULTS"
_REGION = re.compile(r"(<!-- deploy-matrix -->\n)(.*?)(<!-- /deploy-matrix -->)", re.S)
_VERSIONS = ("keras", "tensorflow-cpu", "tensorflow", "jax", "torch", "tf2onnx", "jax2onnx", "onnxscript",
             "onnxruntime", "openvino", "ai-edge-litert", "litert-torch")


def load(directory: Path) -> dict[str, dict]:
    """The result files in ``directory``, by backend."""
    results = {}
    for backend in BACKENDS:
        path = Path(directory) / f"{backend}.json"
        if path.exists():
            results[backend] = json.loads(path.read_text())
    return results


class _Notes:
    """Footnotes (a), (b), ... shared by every table of the page, one per distinct text."""

    def __init__(self):
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"({chr(ord('a') + self.texts.index(text))})"

    def render(self) -> list[str]:
        return [f"- ({chr(ord('a') + i)}) {text}" for i, text in enumerate(self.texts)]


def _escape(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _note(text: str) -> str:
    """A reason as a footnote: its leading error class (``module.Name:``) in code."""
    text = _escape(text)
    return re.sub(r"^([\w.]+\.\w+): ", r"`\1`: ", text)


def _diff(value: float) -> str:
    return "0" if value == 0 else f"{value:.1e}"


def _cell(cell: dict | None, notes: _Notes) -> str:
    if cell is None:
        return "not run"
    status = cell.get("status")
    if status == "ok":
        note = f" {notes.mark(_note(cell['note']))}" if cell.get("note") else ""
        return f"✓ {_diff(cell['max_abs_diff'])}{note}"
    if status == "xfail":
        return f"✗ {notes.mark(_note(cell.get('reason', '')))}"
    if status == "skipped":
        return f"– {notes.mark('not run: ' + _note(cell.get('reason', '')))}"
    return f"**FAILED** {notes.mark('FAILED: ' + _note(cell.get('reason', '')))}"


def _table(columns: list[tuple[str, str]], cases: dict[str, str], cell_of, notes: _Notes) -> list[str]:
    lines = ["| layer | " + " | ".join(title for _, title in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for case, spec in cases.items():
        lines.append(f"| `{spec}` | " + " | ".join(_cell(cell_of(route, case), notes) for route, _ in columns) + " |")
    return lines


def _keras_backend_cell(results: dict[str, dict], route: str, case: str) -> dict | None:
    """The cell from the run that ran it (the others recorded it as skipped: it runs once)."""
    found = [r["cells"].get(f"{route}/{case}") for r in results.values()]
    found = [c for c in found if c is not None]
    ran = [c for c in found if c.get("status") != "skipped" or "runs once" not in c.get("reason", "")]
    return (ran or found or [None])[0]


def render(results: dict[str, dict]) -> str:
    """The Markdown that goes between the page's markers."""
    if not results:
        return ("*No results yet: run `python docs/scripts/deploy_matrix.py --run`.*\n")
    notes = _Notes()
    first = next(iter(results.values()))
    cases = first["cases"]
    out = []
    for backend, result in results.items():
        routes = [r for r, backends in result["routes"].items() if backend in backends]
        columns = [(r, ROUTE_TITLES.get(r, r)) for r in routes]
        out += [f"**{TITLES.get(backend, backend)} backend**", ""]
        out += _table(columns, cases, lambda route, case, result=result: result["cells"].get(f"{route}/{case}"), notes)
        out.append("")
    if any(k.split("/")[0] in KERAS_BACKEND_ROUTES for r in results.values() for k in r["cells"]):
        out += ["**Keras' inference-only backends** (`.keras` files saved on PyTorch, loaded and called there)", ""]
        columns = list(KERAS_BACKEND_ROUTES.items())
        out += _table(columns, cases, lambda route, case: _keras_backend_cell(results, route, case), notes)
        out.append("")
    versions: dict[str, str] = {}
    for result in results.values():
        versions.update(result.get("versions", {}))
    used = ", ".join(f"{name} {versions[name]}" for name in _VERSIONS if name in versions)
    out += ["✓: matches eager inference; the number is the largest absolute difference (float32, tolerance "
            "1e-5 times the larger of 1 and the output's largest magnitude). ✗: fails, with the converter's "
            "error and what blocks it. –: not run.", ""]
    out += notes.render()
    dates = sorted({r["date"] for r in results.values() if r.get("date")})
    out += ["", f"Measured{' on ' + ' to '.join(dates[::max(1, len(dates) - 1)]) if dates else ''} with "
                f"Python {first.get('python', '?')}, {used}."]
    return "\n".join(out) + "\n"


def update(results: dict[str, dict], check: bool = False, page: Path = PAGE) -> bool:
    """Writes the matrix into ``page`` (or, with ``check``, only compares). Returns True when it differed."""
    text = page.read_text(encoding="utf-8")
    match = _REGION.search(text)
    if match is None:
        raise SystemExit(f"{page}: no <!-- deploy-matrix --> ... <!-- /deploy-matrix --> markers")
    new = text[:match.start(2)] + render(results) + text[match.end(2):]
    if new != text and not check:
        page.write_text(new, encoding="utf-8")
    return new != text


def run_tests(directory: Path, backends=BACKENDS) -> None:
    """Runs tests/export on each backend, one after the other, writing DIR/<backend>.json."""
    for backend in backends:
        env = {**os.environ, "KERAS_BACKEND": backend, ENV: str(directory)}
        print(f"=== KERAS_BACKEND={backend} pytest tests/export", flush=True)
        subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/export"], cwd=ROOT, env=env, check=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="?", type=Path, help="directory holding <backend>.json files")
    parser.add_argument("--run", action="store_true", help="run tests/export on each backend first")
    parser.add_argument("--write", action="store_true", help="write the tables into docs/deploying.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/deploying.md differs")
    args = parser.parse_args(argv)
    if args.run:
        directory = args.results or Path(tempfile.mkdtemp(prefix="normlab-export-"))
        run_tests(directory)
        args.results, args.write = directory, True
    if args.results is None:
        parser.error("give the results directory, or --run")
    results = load(args.results)
    if not results:
        parser.error(f"no <backend>.json in {args.results}")
    if args.check:
        stale = update(results, check=True)
        print("docs/deploying.md is out of date" if stale else "docs/deploying.md is up to date")
        return int(stale)
    if args.write:
        print("docs/deploying.md " + ("updated" if update(results) else "already up to date"))
        return 0
    print(render(results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
