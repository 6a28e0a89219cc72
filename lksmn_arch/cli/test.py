"""``lksmn-test -opt OPT.yml``: BasicSR's test pipeline (benchmarks, metrics) with LKSMN registered."""
import sys
from typing import Optional, Sequence

from lksmn_arch.training.pipeline import cli, run_testing


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli(run_testing, 'lksmn-test', argv)


if __name__ == '__main__':
    sys.exit(main())
