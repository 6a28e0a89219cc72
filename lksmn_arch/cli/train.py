"""``lksmn-train -opt OPT.yml``: BasicSR's training pipeline with LKSMN registered."""
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:  # torch and BasicSR load here (lksmn_arch.load), so that a Ctrl-C meanwhile is one line too
        from lksmn_arch.training.pipeline import cli, run_training
    except KeyboardInterrupt:
        print('\nlksmn-train: interrupted while starting; nothing was written', file=sys.stderr)
        return 130
    return cli(run_training, 'lksmn-train', argv)


if __name__ == '__main__':
    sys.exit(main())
