from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = next(
    line.split('"')[1]
    for line in (HERE / "skknn" / "__init__.py").read_text().splitlines()
    if line.startswith("__version__")
)

setup(
    name="skknn",
    version=VERSION,
    description="Learned nearest-neighbour search as scikit-learn estimators",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    packages=find_packages(include=["skknn", "skknn.*"]),
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.23",
        "scipy>=1.9",
        "scikit-learn>=1.6",
        "joblib>=1.2",
        "threadpoolctl>=3.1",
        "keras>=3",
        "jax",
        "jaxlib",
        "pynndescent>=0.5.10",
        "numba>=0.57",
        # METIS for ClusterFilteredKNN(partition='graph'), where pymetis has
        # wheels (CPython 3.10-3.13 on Linux x86-64 and macOS); elsewhere the
        # 'graph' extra, which may compile it.
        "pymetis>=2025.1; python_version < '3.14' and ((sys_platform == 'linux' "
        "and platform_machine == 'x86_64') or sys_platform == 'darwin')",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.80", "matplotlib>=3.6", "dask[distributed]>=2024.1"],
        "docs": ["sphinx>=7", "numpydoc>=1.6", "sphinx-gallery>=0.15", "matplotlib>=3.6"],
        "hnswlib": ["hnswlib"],
        "usearch": ["usearch"],
        "annoy": ["annoy"],
        "graph": ["pymetis>=2025.1"],
        "dask": ["dask[distributed]>=2024.1"],
        "bench": ["hnswlib", "faiss-cpu", "matplotlib>=3.6"],
        "lint": ["ruff"],
    },
    entry_points={"console_scripts": ["skknn=skknn._cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
