"""Machine-info parsing: /proc/cpuinfo, /proc/loadavg, CPU pressure; what makes two machines one."""

from normbench import machine

X86_AVX512 = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC
stepping	: 1
cache size	: 1024 KB
flags		: fpu sse4_1 sse4_2 fma avx avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 hypervisor

processor	: 1
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC
stepping	: 1
flags		: fpu sse4_1 sse4_2 fma avx avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 hypervisor
"""

X86_AVX2 = """processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 85
model name	: Intel(R) Xeon(R) CPU @ 2.20GHz
stepping	: 7
flags		: fpu sse4_2 fma avx avx2
"""

ARM = """processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes sve
CPU implementer	: 0x41
CPU architecture: 8
CPU part	: 0xd40
CPU revision	: 1
"""


def test_x86_with_avx512():
    cpu = machine.parse_cpuinfo(X86_AVX512)
    assert cpu["model"] == "AMD EPYC" and cpu["vendor"] == "AuthenticAMD"
    assert (cpu["family"], cpu["model_id"], cpu["stepping"]) == ("25", "17", "1")
    assert cpu["logical_cpus"] == 2 and cpu["hypervisor"]
    assert cpu["avx512"] and cpu["avx2"]
    assert cpu["avx512_flags"] == ["avx512_bf16", "avx512bw", "avx512dq", "avx512f", "avx512vl"]
    assert "fpu" not in cpu["isa"] and "fma" in cpu["isa"]


def test_x86_without_avx512():
    cpu = machine.parse_cpuinfo(X86_AVX2)
    assert not cpu["avx512"] and cpu["avx2"] and cpu["avx512_flags"] == []
    assert cpu["logical_cpus"] == 1 and not cpu["hypervisor"]
    assert any("AVX2, no AVX-512" in line for line in machine.header_lines({"cpu": cpu}))


def test_arm_features():
    cpu = machine.parse_cpuinfo(ARM)
    assert cpu["vendor"] == "0x41" and cpu["model_id"] == "0xd40"
    assert not cpu["avx512"] and "sve" in cpu["isa"] and "asimd" in cpu["isa"]


def test_loadavg_and_pressure():
    assert machine.parse_loadavg("3.54 2.16 2.47 3/104 13540\n") == {
        "1m": 3.54, "5m": 2.16, "15m": 2.47, "running": 3, "tasks": 104}
    text = "some avg10=31.20 avg60=12.00 avg300=5.00 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    assert machine.parse_pressure(text) == {"avg10": 31.2, "avg60": 12.0}
    line = machine.load_text({"1m": 3.54, "5m": 2.16, "15m": 2.47, "running": 3, "cpu_pressure": {"avg10": 31.2}})
    assert line == "3.54 2.16 2.47, 3 running, CPU pressure 31%"


def test_the_live_machine_is_described():
    info = machine.machine_info()
    assert info["cpu"]["model"] and info["cpus"] >= 1
    assert isinstance(info["versions"], dict)
    lines = machine.header_lines(info, machine.load(), machine.load())
    assert lines[0].startswith("cpu") and lines[-1].startswith("load")


def test_differences_tell_cpus_apart():
    a = {"cpu": machine.parse_cpuinfo(X86_AVX512), "versions": {"torch": "2.13"}, "cpus_usable": 2}
    b = {"cpu": machine.parse_cpuinfo(X86_AVX2), "versions": {"torch": "2.13"}, "cpus_usable": 2}
    cpu, other = machine.differences(a, a)
    assert cpu == [] and other == []
    cpu, _ = machine.differences(a, b)
    assert any(line.startswith("cpu model:") for line in cpu)
    assert any(line.startswith("cpu isa:") for line in cpu)
    c = dict(a, versions={"torch": "2.14"}, cpus_usable=1)
    cpu, other = machine.differences(a, c)
    assert cpu == [] and "torch: 2.13 vs 2.14" in other and any("cpus_usable" in o for o in other)
    cpu, _ = machine.differences({"cpus": 2}, a)  # an old result without the CPU
    assert cpu == ["CPU not recorded in BASE"]
