"""Install lksmn_arch, a BasicSR plugin implementing LKSMN.

Install without build isolation so that basicsr 1.4.2 (an sdist whose setup.py imports torch)
builds against the torch already in the environment:

    pip install --no-build-isolation -c constraints-cpu.txt -e .[test]      # CPU machine
    pip install --no-build-isolation -e .[test]                              # GPU machine, torch already installed
"""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


class BuildWithOptionFiles(build_py):
    """Also put the option files of options/ into the package (lksmn_arch/options/), so that an installed
    lksmn_arch has its templates (lksmn-train -opt NAME.yml finds them) without the source tree."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / 'lksmn_arch' / 'options'
        for source in sorted((ROOT / 'options').rglob('*.yml')):
            destination = target / source.relative_to(ROOT / 'options')
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)


def read_version() -> str:
    for line in (ROOT / 'lksmn_arch' / 'version.py').read_text().splitlines():
        if line.startswith('__version__'):
            return line.split('=')[1].strip().strip('\'"')
    raise RuntimeError('lksmn_arch/version.py has no __version__')


setup(
    name='lksmn_arch',
    version=read_version(),
    description='LKSMN (Large Kernel Spatial Modulation Network) for lightweight image super-resolution, '
    'as a BasicSR 1.4.2 plugin',
    long_description=(ROOT / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['lksmn_arch', 'lksmn_arch.*']),
    package_data={'lksmn_arch': ['data/*.json', 'weights/*.json', 'inference/*.json', 'weights/*.pth', 'weights/*.safetensors']},
    cmdclass={'build_py': BuildWithOptionFiles},
    python_requires='>=3.10',
    install_requires=[
        'basicsr==1.4.2',
        'torch>=1.13',
        'einops',
        # lmdb >= 2 refuses to open one environment twice in a process, which BasicSR does when
        # train and val read the same LMDB; see lksmn_arch/compat.py.
        'lmdb<2',
        'opencv-python',
        'pyyaml',
        'tqdm',
        'scikit-image',
    ],
    extras_require={
        'test': ['pytest'],
        'onnx': ['onnx', 'onnxruntime', 'onnxscript'],
        # OpenVINO: lksmn-upscale's fastest CPU path (fp32 and bf16); it runs the ONNX export
        'openvino': ['openvino>=2025.0', 'onnx', 'onnxscript'],
        'bench': ['spandrel', 'matplotlib'],
        # loading LKSMN in spandrel-based tools (lksmn_arch.spandrel_support), and .safetensors files
        'spandrel': ['spandrel', 'safetensors'],
    },
    entry_points={
        'console_scripts': [
            'lksmn-train=lksmn_arch.cli.train:main',
            'lksmn-test=lksmn_arch.cli.test:main',
            'lksmn-prepare=lksmn_arch.cli.prepare:main',
            'lksmn-demo=lksmn_arch.cli.demo:main',
            'lksmn-upscale=lksmn_arch.cli.upscale:main',
            'lksmn-export=lksmn_arch.cli.export:main',
        ],
    },
)
