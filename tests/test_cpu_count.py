"""The CPUs a process may use (affinity and cgroup quota) size the runtimes' thread pools, and only shrink them."""
import os

import pytest

from lksmn_arch.utils import cpus


@pytest.fixture
def fake_system(monkeypatch, tmp_path):
    """A machine of 8 physical cores whose files the test writes: cgroup v2 cpu.max and v1 quota files."""
    v2 = tmp_path / 'cpu.max'
    quota, period = tmp_path / 'quota', tmp_path / 'period'
    monkeypatch.setattr(cpus, 'CGROUP_V2_CPU_MAX', str(v2))
    monkeypatch.setattr(cpus, 'CGROUP_V1_QUOTA', str(quota))
    monkeypatch.setattr(cpus, 'CGROUP_V1_PERIOD', str(period))
    monkeypatch.setattr(cpus, 'physical_cores', lambda: 8)
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: set(range(16)))  # 8 cores, 2 threads each
    return v2, quota, period


def test_an_unrestricted_process_keeps_each_runtimes_own_thread_count(fake_system):
    assert cpus.cgroup_cpu_limit() is None
    assert cpus.usable_cpus() == 16
    assert cpus.runtime_threads() is None


def test_a_cgroup_v2_quota_rounds_up_to_whole_cpus(fake_system):
    v2, _, _ = fake_system
    v2.write_text('250000 100000\n')  # 2.5 CPUs
    assert cpus.cgroup_cpu_limit() == 3
    assert cpus.runtime_threads() == 3
    v2.write_text('max 100000\n')
    assert cpus.cgroup_cpu_limit() is None


def test_a_cgroup_v1_quota_counts_and_minus_one_means_none(fake_system):
    _, quota, period = fake_system
    period.write_text('100000')
    quota.write_text('200000')
    assert cpus.usable_cpus() == 2
    quota.write_text('-1')
    assert cpus.cgroup_cpu_limit() is None


def test_an_affinity_mask_smaller_than_the_cores_sets_the_pool(fake_system, monkeypatch):
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1})  # taskset -c 0,1
    assert cpus.runtime_threads() == 2


def test_the_cli_passes_the_limit_to_openvino_and_onnx_runtime(fake_system, monkeypatch, tmp_path):
    from lksmn_arch.inference import export, files
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1, 2})
    seen = {}

    class Recorder:
        def __init__(self, path, *args, threads=None, **kwargs):
            seen[type(self).__name__] = threads
            raise RuntimeError('stop here: only the thread count is under test')

    monkeypatch.setattr(export, 'OpenVinoModel', type('OpenVinoModel', (Recorder,), {}))
    monkeypatch.setattr(export, 'OnnxModel', type('OnnxModel', (Recorder,), {}))
    onnx_file = tmp_path / 'model.onnx'
    onnx_file.write_bytes(b'unused')
    for backend in ('openvino', 'onnxruntime'):
        with pytest.raises(RuntimeError, match='stop here'):
            files.build_upscaler(onnx_file, backend=backend, device='cpu')
    assert seen == {'OpenVinoModel': 3, 'OnnxModel': 3}
