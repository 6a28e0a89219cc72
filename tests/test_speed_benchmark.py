"""benchmarks/speed.py: what it measures and how it reports (not timings: those are the benchmark's job)."""
import importlib.util
import platform
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import lksmn_arch  # noqa: F401
from lksmn_arch.archs.lksmn_arch import LKSMN
from lksmn_arch.inference.latency import make_forward, time_interleaved

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'benchmarks' / 'speed.py'


def _load() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location('speed_benchmark', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


speed = _load()


def test_ratio_column_is_against_the_peers_fastest_fp32_path_not_its_slowest():
    Row = speed.Row
    rows = [Row('SAFMN', 'eager', 1, 1, latency_ms=400.0), Row('SAFMN', 'compile', 1, 1, latency_ms=250.0),
            Row('SAFMN', 'bf16 channels_last', 1, 1, latency_ms=100.0), Row('LKSMN', 'compile', 1, 1, latency_ms=300.0)]
    baseline = speed.fastest_fp32(rows, 'SAFMN')
    assert baseline.path == 'compile'  # bf16 is faster but not fp32
    table = speed.format_table(rows, baseline)
    assert '| LKSMN | compile | 0K | 0.00 | 300.0 | 1.20x |' in table
    assert 'vs SAFMN fastest fp32 (compile)' in table


def test_every_network_gets_every_path_and_lksmn_also_its_training_form():
    cpu = torch.device('cpu')
    assert speed.paths_for('SAFMN', cpu, bf16=True)[:5] == ['eager', 'channels_last', 'compile',
                                                            'compile_channels_last', 'onnxruntime']
    assert 'bf16 channels_last' in speed.paths_for('SAFMN', cpu, bf16=True)
    assert speed.paths_for('LKSMN', cpu, bf16=False)[0] == speed.TRAINING_FORM


def test_machine_header_names_cpu_flags_threads_and_versions():
    line = speed.machine_line(speed.describe_machine(torch.device('cpu'), 2))
    for word in ('AVX-512', 'BF16', 'AMX', '2 threads', f'torch {torch.__version__}', 'onnxruntime'):
        assert word in line


def test_interleaved_timing_runs_candidates_in_round_robin_and_drops_a_failing_one():
    calls = []

    def make(name):
        return lambda x: calls.append(name) or x

    def broken(x):
        raise RuntimeError('no compiler')

    times, first = time_interleaved({'a': make('a'), 'b': make('b'), 'c': broken}, torch.zeros(1), rounds=3,
                                    warmup=1)
    assert calls == ['a', 'b'] + ['a', 'b'] * 4  # first calls, then warm-up + timed rounds alternate
    assert len(times['a']) == len(times['b']) == 3 and times['c'] == []
    assert first['c'] != first['c']  # NaN marks the failure


def test_paths_run_the_fused_network_and_agree_with_the_training_form():
    torch.manual_seed(0)
    model = LKSMN(upscale=2, num_feat=12, num_block=1, num_heads=2).eval()
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        expected = model(x)
        for path in ('eager', 'channels_last'):
            assert float((make_forward(model, path)(x) - expected).abs().max()) < 1e-5
        assert float((make_forward(model, 'bf16 channels_last')(x).float() - expected).abs().max()) < 0.1
    assert float((make_forward(model, 'openvino')(x) - expected).abs().max()) < 1e-4
    assert float((make_forward(model, 'bf16 openvino')(x) - expected).abs().max()) < 0.1
    assert not model.fused


def test_bad_lksmn_configuration_is_a_one_line_error_exit_2():
    result = subprocess.run([sys.executable, str(SCRIPT), '--lksmn', 'x={"ffn": "mlp"}'], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    assert "ffn must be one of ['gated_dconv', 'conv_mixer', 'none']" in result.stderr
    assert 'Traceback' not in result.stderr


def test_plain_timing_prints_one_median_for_the_cross_check():
    result = subprocess.run([sys.executable, str(SCRIPT), '--plain', 'LKSMN', 'channels_last', '--rounds', '1',
                             '--warmup', '0', '--size', '40x24'], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) > 0


def test_help_explains_the_phases_and_outputs():
    text = speed.build_parser().format_help()
    for word in ('--json', '--markdown', '--plain', '--size', 'interleaved', 'memory'):
        assert word in text


def test_speed_page_figures_are_the_tables_the_benchmark_wrote():
    """docs/speed.md's tables are benchmarks/results/speed_cpu.md verbatim, so no figure is typed by hand."""
    repo = Path(__file__).resolve().parents[1]
    written = (repo / 'benchmarks' / 'results' / 'speed_cpu.md').read_text().splitlines()
    page = (repo / 'docs' / 'speed.md').read_text()
    missing = [line for line in written if line.strip() and line not in page]
    assert not missing, f'docs/speed.md lacks {len(missing)} line(s) of speed_cpu.md, e.g. {missing[0]!r}'


def test_interleaved_timing_idles_before_every_call_outside_the_timed_span(monkeypatch):
    import lksmn_arch.inference.latency as latency
    events = []
    monkeypatch.setattr(latency.time, 'sleep', lambda seconds: events.append(('sleep', seconds)))
    forwards = {name: (lambda x, name=name: events.append(('call', name)) or x) for name in ('a', 'b')}
    times, _ = time_interleaved(forwards, torch.zeros(1), rounds=2, warmup=1, pause=0.25)
    assert len(times['a']) == len(times['b']) == 2
    timed_calls = events[2:]  # after each forward's untimed first call
    assert timed_calls == [('sleep', 0.25), ('call', 'a'), ('sleep', 0.25), ('call', 'b')] * 3


def test_fastest_latency_takes_paths_per_network_and_leaves_out_one_that_cannot_be_built():
    from lksmn_arch.inference.latency import fastest_latency
    torch.manual_seed(0)
    tiny = {name: LKSMN(upscale=2, num_feat=12, num_block=1, num_heads=2).eval() for name in ('a', 'b')}
    best = fastest_latency(tiny, (1, 3, 8, 8), paths={'a': ['channels_last', 'no such path'],
                                                      'b': ['eager', 'onnxruntime']}, rounds=1, warmup=0, pause=0)
    assert best['a'][0] == 'channels_last' and best['b'][0] in ('eager', 'onnxruntime')
    assert all(seconds > 0 for _, seconds in best.values())


def test_openvino_path_gives_a_peer_its_own_conversion_when_the_export_cannot():
    class PoolsToTheTracingSize(torch.nn.Module):  # like SAFMN: exports for the tracing input's size only
        def forward(self, x):
            pooled = torch.nn.functional.adaptive_max_pool2d(x, (x.shape[-2] // 2, x.shape[-1] // 2))
            return torch.nn.functional.interpolate(pooled, size=x.shape[-2:], mode='nearest') + x

    peer = PoolsToTheTracingSize()
    y = torch.rand(1, 3, 10, 14)
    assert float((make_forward(peer, 'openvino')(y) - peer(y)).abs().max()) < 1e-5


def test_cross_check_compares_the_table_with_a_default_allocator_run_and_adds_a_keep_memory_run(monkeypatch):
    calls = []

    def fake_plain(name, path, options, env=None):
        calls.append((name, path, (env or {}).get('GLIBC_TUNABLES')))
        return 200.0 if env is None else 180.0

    monkeypatch.setattr(speed, '_plain_subprocess', fake_plain)
    monkeypatch.setattr(speed.platform, 'libc_ver', lambda: ('glibc', '2.36'))
    rows = [speed.Row('SAFMN', 'eager', 1, 1, latency_ms=400.0), speed.Row('SAFMN', 'compile', 1, 1, latency_ms=210.0)]
    [check] = speed.cross_check(rows, ['SAFMN'], rounds=1, warmup=0, threads=1, size='32x32', pause=0.0)
    assert calls == [('SAFMN', 'compile', None), ('SAFMN', 'compile', speed.KEEP_MEMORY_TUNABLES)]
    assert check['plain_ms'] == 200.0 and check['plain_keep_memory_ms'] == 180.0
    assert abs(check['difference'] - 0.05) < 1e-9  # against the default-allocator run, as the table runs


FAULTS_PER_CALL = '''
import resource, sys, torch
from lksmn_arch.inference.latency import settle_allocator
if sys.argv[1] == 'settled':
    settle_allocator()
def call():  # a forward-like call: three 10 MB temporaries, freed at the end
    tensors = [torch.ones(10 << 18) for _ in range(3)]
    del tensors
call(); call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    call()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
'''


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc malloc behaviour')
def test_settled_allocator_stops_a_fresh_process_from_page_faulting_its_temporaries_every_call():
    def faults(mode: str) -> int:
        result = subprocess.run([sys.executable, '-c', FAULTS_PER_CALL, mode], capture_output=True, text=True,
                                check=True, cwd=REPO)
        return int(result.stdout.strip().splitlines()[-1])

    assert faults('fresh') > 400  # memory returned to the OS and faulted back at every call (512-5088 here)
    assert faults('settled') < 100  # 0 here


def test_interleaved_timing_settles_the_allocator_before_the_first_call(monkeypatch):
    import lksmn_arch.inference.latency as latency
    events = []
    monkeypatch.setattr(latency, 'settle_allocator', lambda: events.append('settle'))
    latency.time_interleaved({'net': lambda x: events.append('call') or x}, torch.zeros(1), rounds=1, warmup=0)
    assert events[0] == 'settle' and events.count('call') == 2
