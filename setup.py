"""Package metadata and the Cython kernel extensions.

The kernels live in the top-level ``kernels/`` folder and are installed as the
``appliance.kernels`` package.  Each extension is listed explicitly.
"""

import sys

from setuptools import Extension, find_packages, setup

try:
    import numpy
    from Cython.Build import cythonize
except ImportError as exc:  # pragma: no cover - build environment problem
    sys.exit(f"appliance: building the kernels needs Cython and numpy ({exc}); "
             "run `make install` or `pip install -e .` which installs them first")

KERNELS = ["rolling", "filters", "grid", "sensors"]

CYTHON_DIRECTIVES = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
}


def _extensions() -> list:
    exts = [
        Extension(
            f"appliance.kernels.{name}",
            [f"kernels/{name}.pyx"],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=["-O3"],
        )
        for name in KERNELS
    ]
    return cythonize(exts, compiler_directives=CYTHON_DIRECTIVES, quiet=True)


def _check_compiler() -> None:
    """Fail with one clear line when no C compiler is available."""
    import shutil
    import sysconfig

    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None and shutil.which("cc") is None:
        sys.exit(f"appliance: no C compiler found ({cc!r}); install one, e.g. "
                 "`apt-get install build-essential`, then retry")


if any(arg.startswith(("build", "develop", "install", "bdist", "editable")) for arg in sys.argv):
    _check_compiler()

setup(
    name="appliance",
    version="0.1.0",
    description="Edge appliance that predicts production-line faults an hour ahead",
    python_requires=">=3.11",
    # every folder of appliance/ with an __init__.py (tests/unit/test_packaging.py holds it)
    packages=[*find_packages(include=["appliance", "appliance.*"]), "appliance.kernels"],
    package_dir={"appliance.kernels": "kernels"},
    package_data={"appliance.storage": ["migrations/*.sql"],
                  # the starter model serves when nothing else is configured
                  "appliance.models": ["starter.onnx"]},
    ext_modules=_extensions(),
    install_requires=[
        "numpy>=1.26",
        "scipy>=1.11",
        "onnxruntime>=1.17",
        "duckdb>=1.1",
        "paho-mqtt>=2.0,<3",
    ],
    extras_require={
        # matplotlib: the PNG plots of `appliance backtest --out` (report only).
        "train": ["scikit-learn>=1.4", "skl2onnx>=1.16", "onnx>=1.15", "matplotlib>=3.7"],
        "dev": ["pytest>=8", "hypothesis>=6", "ruff>=0.5", "bottleneck>=1.3", "pandas>=2"],
    },
    entry_points={"console_scripts": ["appliance=appliance.cli:main"]},
    zip_safe=False,
)
