"""How the CPU kernels are found, keyed, built and loaded (no kernel runs here)."""

from __future__ import annotations

import ctypes.util
import io
import os
import shutil
import sys

import pytest

from normlab import backends
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


def test_a_cc_that_is_no_command_line_is_a_build_failure(monkeypatch, caplog):
    """``CC='"gcc'`` (an unbalanced quote) raised shlex's "No closing quotation" from
    every op call, naming no variable; it is a failed build: the warning names CC."""
    monkeypatch.setenv("CC", '"gcc')
    with pytest.raises(RuntimeError, match=r"CC='\"gcc' is not a command line"):
        cpu._compiler()
    with caplog.at_level("WARNING"):
        assert cpu._load() is None
    assert "CC=" in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF libraries")
def test_a_damaged_library_in_the_cache_is_built_again(tmp_path, monkeypatch):
    """A library cut short in the cache (a crash of the disk, a copy) was loaded as
    it was: SIGBUS killed the process; an empty or foreign file turned the kernels
    off for good. Either is built again; a whole one is used as it is."""
    if cpu._compiler() is None:
        pytest.skip("no C compiler")
    good = cpu.build()  # the cache's library (built once per machine)
    data = good.read_bytes()
    monkeypatch.setenv("NORMLAB_CACHE_DIR", str(tmp_path))
    target = cpu._target(cpu._compiler())
    builds = []

    def compile_from_cache(cc, objects, out):
        builds.append(out)
        shutil.copyfile(good, out)

    monkeypatch.setattr(cpu, "_compile", compile_from_cache)
    for damaged in (data[: len(data) // 2], data[:-1], b"", b"not a library at all, but long enough" * 4):
        target.write_bytes(damaged)
        assert not cpu._whole(target)
        assert cpu.build() == target and target.read_bytes() == data
    assert len(builds) == 4
    assert cpu.build() == target and len(builds) == 4


@pytest.mark.once  # environment variables: the same on every backend
def test_the_switches_read_their_variables_strictly(monkeypatch):
    """``NORMLAB_FAST_PATHS=false`` (or ``off``, ``no``) left the fast paths on,
    silently: only ``0`` turned them off. Common spellings of a boolean are read
    as such, and anything else is an error naming the variable."""
    for name, read in (("NORMLAB_FAST_PATHS", backends.enabled), ("NORMLAB_CPU_KERNELS", cpu.library)):
        for value in ("0", "false", "OFF", " no "):
            monkeypatch.setenv(name, value)
            assert not read(), (name, value)
        for value in ("1", "true", "On", ""):
            monkeypatch.setenv(name, value)
            assert backends.switch(name), (name, value)
        monkeypatch.setenv(name, "maybe")
        with pytest.raises(ValueError, match=rf"Invalid `{name}`: expected 0 or 1.*Received: {name}='maybe'"):
            read()
        monkeypatch.delenv(name)
