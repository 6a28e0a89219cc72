"""Train a peer network (SAFMN, SPAN: spandrel's classes) through BasicSR from an option file.

The same command as ``lksmn-train``, with the peers registered in BasicSR's ``ARCH_REGISTRY`` first
(``SpandrelSAFMN``, ``SpandrelSPAN``; see ``equal_budget.register_peers``), so that a peer trains with
exactly an LKSMN option file's recipe and resumes as it does (``--auto_resume``)::

    python benchmarks/train_peer.py -opt train_SAFMN_x4_openphotos.yml --auto_resume

Needs the ``bench`` extra (spandrel).
"""
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from equal_budget import register_peers  # noqa: E402

from lksmn_arch.training.pipeline import cli, run_training  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; the arguments are lksmn-train's."""
    if not register_peers():
        print('train_peer.py: error: spandrel is not installed (pip install -e ".[bench]")', file=sys.stderr)
        return 2
    return cli(run_training, 'train_peer.py', argv)


if __name__ == '__main__':
    sys.exit(main())
