"""How many CPUs this process may use: its affinity mask and its cgroup's CPU quota, whichever is smaller.

Runtimes size their thread pools from the machine (ONNX Runtime and OpenVINO from the physical cores), so in
a container limited to 2 CPUs of a 64-core host, or under ``taskset``, they start more threads than they can
run and each pass waits on the ones descheduled."""
import math
import os
from typing import Optional

from lksmn_arch.utils.sysfs import read_value

CGROUP_V2_CPU_MAX = '/sys/fs/cgroup/cpu.max'
CGROUP_V1_QUOTA = '/sys/fs/cgroup/cpu/cpu.cfs_quota_us'
CGROUP_V1_PERIOD = '/sys/fs/cgroup/cpu/cpu.cfs_period_us'


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
