"""``lksmn-train -opt OPT.yml``: BasicSR's training pipeline with LKSMN registered."""
import sys
from typing import Optional, Sequence

from lksmn_arch.training.pipeline import cli, run_training


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli(run_training, 'lksmn-train', argv)


if __name__ == '__main__':
    sys.exit(main())
