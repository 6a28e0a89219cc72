"""What this machine's CPU is and how many of its CPUs this process may use.

``cpu_model_name``/``cpu_flags`` read /proc/cpuinfo once for every caller (speed labels, the training path's
bf16 check, benchmark reports). ``usable_cpus`` is the affinity mask capped by the cgroup's CPU quota: runtimes size their thread pools from the machine (ONNX Runtime and OpenVINO from the physical cores), so in
a container limited to 2 CPUs of a 64-core host, or under ``taskset``, they start more threads than they can
run and each pass waits on the ones descheduled."""
import functools
import math
import os
import platform
from typing import FrozenSet, Optional, Tuple

from lksmn_arch.utils.sysfs import read_value

CGROUP_V2_CPU_MAX = '/sys/fs/cgroup/cpu.max'
CGROUP_V1_QUOTA = '/sys/fs/cgroup/cpu/cpu.cfs_quota_us'
CGROUP_V1_PERIOD = '/sys/fs/cgroup/cpu/cpu.cfs_period_us'
CPUINFO = '/proc/cpuinfo'
# cpuinfo flag -> the label a speed figure names (what decides which kernels oneDNN runs)
LABELLED_FLAGS = (('avx512f', 'AVX-512'), ('avx512_bf16', 'BF16'), ('amx_tile', 'AMX'))


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> Tuple[str, FrozenSet[str]]:
    """The first processor's model name and flags from /proc/cpuinfo; ('', empty) where it cannot be read."""
    name, flags = '', frozenset()
    try:
        with open(CPUINFO, errors='replace') as file:
            for line in file:
                key, _, value = line.partition(':')
                key = key.strip()
                if key == 'model name' and not name:
                    name = value.strip()
                elif key == 'flags' and not flags:
                    flags = frozenset(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    return name, flags


def cpu_model_name() -> str:
    """The CPU's model name ('AMD EPYC 9R14 ...'), or what ``platform`` knows where /proc/cpuinfo is absent."""
    return _cpuinfo()[0] or platform.processor() or platform.machine() or 'unknown CPU'


def cpu_flags() -> FrozenSet[str]:
    """The CPU's feature flags as /proc/cpuinfo names them ('avx2', 'avx512f', 'avx512_bf16', ...); empty
    where they cannot be read."""
    return _cpuinfo()[1]


def cpu_label() -> str:
    """The model name and the vector extensions that matter here, for a speed figure: 'AMD EPYC (AVX-512, BF16)'."""
    flags = cpu_flags()
    extensions = [label for flag, label in LABELLED_FLAGS if flag in flags] or (['AVX2'] if 'avx2' in flags else [])
    name = cpu_model_name()
    return f'{name} ({", ".join(extensions)})' if extensions else name


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX): there bf16 autocast is faster than
    fp32; elsewhere oneDNN emulates it, which is slower than fp32."""
    return bool(cpu_flags() & {'avx512_bf16', 'amx_bf16'})


def cgroup_cpu_limit() -> Optional[int]:
    """CPUs the cgroup's quota allows (rounded up), None without a quota (v2 ``cpu.max``, or v1 CFS)."""
    v2 = read_value(CGROUP_V2_CPU_MAX)
    if v2:
        quota, _, period = v2.partition(' ')
        if quota != 'max' and quota.isdigit() and period.isdigit() and int(period) > 0:
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    quota, period = read_value(CGROUP_V1_QUOTA), read_value(CGROUP_V1_PERIOD)
    if quota and period and quota.lstrip('-').isdigit() and period.isdigit() and int(quota) > 0 < int(period):
        return max(1, math.ceil(int(quota) / int(period)))
    return None


def usable_cpus() -> int:
    """CPUs this process can run on at once: the affinity mask, capped by the cgroup quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(count, limit) if limit else count)


def physical_cores() -> int:
    """Distinct (package, core) pairs in sysfs: the pool size ONNX Runtime and OpenVINO choose by default."""
    import glob
    cores = set()
    for topology in glob.glob('/sys/devices/system/cpu/cpu[0-9]*/topology'):
        core, package = read_value(f'{topology}/core_id'), read_value(f'{topology}/physical_package_id')
        if core is not None:
            cores.add((package, core))
    return len(cores) or os.cpu_count() or 1


def runtime_threads() -> Optional[int]:
    """A thread count for a runtime's CPU pool when this process may use fewer CPUs than the physical cores
    the runtime would take by default; None (keep the runtime's own choice) otherwise, so that an unrestricted
    machine runs exactly as the runtime tunes itself."""
    usable = usable_cpus()
    return usable if usable < physical_cores() else None
