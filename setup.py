"""Builds the N:M mask kernel (plain C with OpenMP, loaded with ctypes); metadata lives in pyproject.toml."""
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP = ["-fopenmp"]


class BuildKernel(build_ext):
    """Builds with OpenMP when the compiler has it, else single-threaded (same results)."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as err:  # noqa: BLE001 - distutils raises CompileError/LinkError
            if not set(OPENMP) & set(ext.extra_compile_args):
                raise
            print(f"nm_mask kernel: building without OpenMP ({err})")
            ext.extra_compile_args = [a for a in ext.extra_compile_args if a not in OPENMP]
            ext.extra_link_args = [a for a in ext.extra_link_args if a not in OPENMP]
            super().build_extension(ext)


setup(
    cmdclass={"build_ext": BuildKernel},
    ext_modules=[
        Extension(
            "nm_plugins.core._nm_mask_kernel",
            sources=["nm_plugins/core/csrc/nm_mask_kernel.c"],
            # -fno-wrapv: undo Python's -fwrapv, which stops the copy loops from vectorising (3x on 7x7 kernels);
            # -ffp-contract=off: no fused multiply-adds, so the gradient pass matches torch.addcmul bit for bit
            extra_compile_args=["-O3", "-std=c11", "-fno-wrapv", "-ffp-contract=off", "-Wno-unknown-pragmas"] + OPENMP,
            extra_link_args=OPENMP,
            optional=True,  # without a C compiler the pure PyTorch path is used
        )
    ],
)
