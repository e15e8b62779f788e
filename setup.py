"""The one compiled part: the SPZ decoder's inner loop in C (threegen_dagster/splats/_spz_kernel.c).

Everything else about the package is in pyproject.toml. The extension is optional: where no C compiler
is found (the slim Docker image), the build goes on without it and spz_unpack's numpy writers decode
instead. ``-ffp-contract=off``: no fused multiply-adds, so the C arithmetic stays numpy's, bit for bit.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "threegen_dagster.splats._spz_kernel",
    sources=["threegen_dagster/splats/_spz_kernel.c"],
    extra_compile_args=["-O3", "-std=c11", "-ffp-contract=off", "-fno-math-errno"],
    optional=True,
)])
