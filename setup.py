"""sglang-dcp: request-level dynamic context parallelism for SGLang DP attention + EP MoE.

``kernels/`` at the repository root is shipped as ``sglang_dcp.kernels``.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["sglang_dcp", "sglang_dcp.*"])
packages.append("sglang_dcp.kernels")

setup(
    name="sglang-dcp",
    version="0.1.0",
    description="Request-level dynamic context parallelism for SGLang DP-attention + EP MoE decoding",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"sglang_dcp.kernels": "kernels"},
    package_data={"sglang_dcp": ["profiles/*.json", "testing/*.json"]},
    install_requires=[],  # pinned in requirements/*.txt; installed by `make install`
    entry_points={
        "sglang.srt.plugins": ["sglang_dcp = sglang_dcp.sglang.plugin:register"],
        "console_scripts": ["sglang-dcp-sim = sglang_dcp.sim.__main__:main"],
    },
)
