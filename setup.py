"""Builds the one-pass N:M mask kernel (plain C, loaded with ctypes); metadata lives in pyproject.toml."""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "nm_plugins.core._nm_mask_kernel",
            sources=["nm_plugins/core/csrc/nm_mask_kernel.c"],
            extra_compile_args=["-O3", "-std=c11"],
            extra_link_args=["-pthread"],
            optional=True,  # without a C compiler the pure PyTorch path is used
        )
    ]
)
