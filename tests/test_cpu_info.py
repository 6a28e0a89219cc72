"""The one /proc/cpuinfo reader: the CPU's name and flags label speed figures and decide the training path."""
import pytest

from lksmn_arch.utils import cpus

EPYC_BF16 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16

processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16
"""
EPYC_AVX2 = """processor\t: 0
model name\t: AMD EPYC 7R13 Processor
flags\t\t: fpu sse2 avx2 fma
"""


@pytest.fixture
def cpuinfo(monkeypatch, tmp_path):
    """Writes a fake /proc/cpuinfo and points the reader at it (its cache cleared before and after)."""
    path = tmp_path / 'cpuinfo'
    monkeypatch.setattr(cpus, 'CPUINFO', str(path))
    cpus._cpuinfo.cache_clear()

    def write(text):
        path.write_text(text)
        cpus._cpuinfo.cache_clear()
    yield write
    cpus._cpuinfo.cache_clear()


def test_a_bf16_cpu_is_named_with_its_extensions_and_gets_native_bf16(cpuinfo):
    cpuinfo(EPYC_BF16)
    assert cpus.cpu_model_name() == 'AMD EPYC 9R14 96-Core Processor'
    assert cpus.cpu_label() == 'AMD EPYC 9R14 96-Core Processor (AVX-512, BF16)'
    assert cpus.cpu_has_native_bf16()


def test_an_avx2_only_cpu_is_labelled_avx2_and_has_no_native_bf16(cpuinfo):
    cpuinfo(EPYC_AVX2)
    assert cpus.cpu_label() == 'AMD EPYC 7R13 Processor (AVX2)'
    assert 'avx512f' not in cpus.cpu_flags()
    assert not cpus.cpu_has_native_bf16()


def test_a_machine_without_cpuinfo_still_has_a_name_and_no_bf16(cpuinfo):
    # the fixture's file is never written: reading it fails, as on macOS or Windows
    assert cpus.cpu_model_name()
    assert cpus.cpu_flags() == frozenset()
    assert not cpus.cpu_has_native_bf16()
