"""How the CPU kernels are found, keyed, built and loaded (no kernel runs here)."""

from __future__ import annotations

import ctypes.util
import io
import os
import shutil

import pytest

from normlab.backends import cpu


def test_cc_may_carry_a_launcher_or_flags(monkeypatch):
    """``CC="ccache gcc"`` is a command, not a program name (it was taken as
    "no compiler", and the slower ATen path ran)."""
    env = shutil.which("env")
    if env is None:
        pytest.skip("no env program")
    monkeypatch.setenv("CC", "env cc -m64")
    assert cpu._compiler() == [env, "cc", "-m64"]
    monkeypatch.setenv("CC", "no-such-compiler-here")
    assert cpu._compiler() is None


ARM = """processor\t: {n}
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid{sve}
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: {part}
"""


def test_arm_cpus_with_other_features_get_other_libraries(monkeypatch):
    """``-march=native`` builds for the CPU's features: on ARM ``/proc/cpuinfo``
    has no ``model name``/``flags``, and every ARM CPU shared one key."""
    def signature(text):
        monkeypatch.setattr(cpu, "open", lambda *a, **k: io.StringIO(text), raising=False)
        return cpu._cpu_signature()

    graviton2 = "".join(ARM.format(n=n, sve="", part="0xd0c") for n in range(2))
    graviton3 = "".join(ARM.format(n=n, sve=" sve", part="0xd40") for n in range(2))
    assert signature(graviton2) != signature(graviton3)
    assert signature(graviton2).count("Features") == 1  # one line per distinct value, not per core


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
def test_a_shared_temporary_folder_is_refused(tmp_path, monkeypatch):
    """Where the cache folder cannot be written, the kernels are built in
    ``<tmp>/normlab-<uid>``: one that others can write (or own) may hold a
    library planted there, and is refused."""
    if cpu._compiler() is None:
        pytest.skip("no C compiler")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(blocked / "kernels"))  # mkdir fails: a file is in the way
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    shared = tmp_path / f"normlab-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(RuntimeError, match="not private"):
        cpu.build()
    shared.chmod(0o700)
    assert cpu._private(shared)


def test_a_library_without_the_entry_points_is_not_used(monkeypatch, caplog):
    """A library that loads but lacks a symbol (a stale or foreign file) turns
    the kernels off with a warning, instead of raising on every call."""
    libm = ctypes.util.find_library("m")
    if libm is None:
        pytest.skip("no libm to load")
    monkeypatch.setattr(cpu, "build", lambda: libm)
    with caplog.at_level("WARNING"):
        assert cpu._load() is None
    assert "unavailable" in caplog.text
