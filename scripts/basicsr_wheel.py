"""Build basicsr 1.4.2's wheel for Python 3.13 and newer, with one build-time fix to its setup.py.

basicsr 1.4.2 (the newest release) cannot even prepare its metadata on Python 3.13: ``get_version`` in its
``setup.py`` reads ``locals()['__version__']`` after ``exec``, and Python 3.13's ``locals()`` (PEP 667) no
longer sees names that ``exec`` defines (``KeyError: '__version__'``). This script:

1. takes the released sdist (``LKSMN_BASICSR_SDIST=path`` for a file you downloaded, else from the package
   index pip is configured with, PEP 691 JSON), and checks its sha256 against the one PyPI publishes;
2. replaces that one function, ``get_version``, with one that executes the version file into a dict, and
   checks the patched setup.py's sha256 (nothing of basicsr's runtime code is touched: the wheel's
   ``basicsr/`` files are the sdist's);
3. builds the (pure-Python) wheel without build isolation, with the torch already installed.

    python scripts/basicsr_wheel.py OUT_DIR      # prints the wheel's path
"""
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

SDIST = 'basicsr-1.4.2.tar.gz'
SDIST_SHA256 = 'b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87'  # as PyPI publishes it
BROKEN = """def get_version():
    with open(version_file, 'r') as f:
        exec(compile(f.read(), version_file, 'exec'))
    return locals()['__version__']
"""
FIXED = """def get_version():
    namespace = {}  # lksmn_arch's build-time fix: Python 3.13's locals() no longer sees names exec defines
    with open(version_file, 'r') as f:
        exec(compile(f.read(), version_file, 'exec'), namespace)
    return namespace['__version__']
"""
PATCHED_SETUP_SHA256 = 'fac6c935733b621d949e1750ade3c60dfccefc1774aacd08a36b35b807592ebd'


class BuildError(Exception):
    """Explained to the user in one line."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def index_url() -> str:
    """pip's configured index (PIP_INDEX_URL, pip config), else PyPI."""
    if os.environ.get('PIP_INDEX_URL'):
        return os.environ['PIP_INDEX_URL']
    try:
        configured = subprocess.run([sys.executable, '-m', 'pip', 'config', 'get', 'global.index-url'],
                                    capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        configured = ''
    return configured or 'https://pypi.org/simple'


def fetch_sdist() -> bytes:
    """The sdist's bytes, from LKSMN_BASICSR_SDIST or the index; sha256 checked."""
    local = os.environ.get('LKSMN_BASICSR_SDIST')
    if local:
        try:
            data = Path(local).read_bytes()
        except OSError as error:
            raise BuildError(f'LKSMN_BASICSR_SDIST={local}: {error.strerror}') from None
    else:
        url = index_url().rstrip('/') + '/basicsr/'
        request = urllib.request.Request(url, headers={'Accept': 'application/vnd.pypi.simple.v1+json'})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                files = json.load(answer)['files']
            link = next(f['url'] for f in files if f['filename'] == SDIST)
            with urllib.request.urlopen(link, timeout=120) as answer:
                data = answer.read()
        except (OSError, ValueError, KeyError, StopIteration) as error:
            raise BuildError(f'cannot fetch {SDIST} from {url} ({error}); download it and set '
                             'LKSMN_BASICSR_SDIST to its path') from None
    if sha256(data) != SDIST_SHA256:
        raise BuildError(f'{SDIST}: sha256 {sha256(data)} is not the released file\'s {SDIST_SHA256}')
    return data


def build(out: Path) -> Path:
    """The patched sdist's wheel in ``out``."""
    with tempfile.TemporaryDirectory() as work:
        archive = Path(work) / SDIST
        archive.write_bytes(fetch_sdist())
        with tarfile.open(archive) as sdist:
            sdist.extractall(work, filter='data')
        setup_py = Path(work) / 'basicsr-1.4.2' / 'setup.py'
        text = setup_py.read_text()
        if text.count(BROKEN) != 1:
            raise BuildError(f'{SDIST}: setup.py does not hold the get_version this fix replaces')
        text = text.replace(BROKEN, FIXED)
        if sha256(text.encode()) != PATCHED_SETUP_SHA256:
            raise BuildError(f'{SDIST}: the patched setup.py has sha256 {sha256(text.encode())}, not the expected '
                             f'{PATCHED_SETUP_SHA256}')
        setup_py.write_text(text)
        out.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps', '--no-build-isolation',
                               '-w', str(out), str(setup_py.parent)], capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f'building the basicsr wheel failed: {(done.stderr.strip().splitlines() or ["?"])[-1]}')
    wheels = sorted(out.glob('basicsr-1.4.2-*.whl'))
    if not wheels:
        raise BuildError(f'pip built no basicsr wheel into {out}')
    return wheels[0]


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] in ('-h', '--help'):
        print(__doc__)
        return 0 if len(sys.argv) == 2 else 2
    try:
        print(build(Path(sys.argv[1])))
    except BuildError as error:
        print(f'basicsr_wheel.py: error: {error}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
