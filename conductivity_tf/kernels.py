"""The solver's numba kernels compiled and cached on disk ahead of parallel work (no TensorFlow):
``python -c "from conductivity_tf import kernels; kernels.compile_kernels()"`` after installing. The Docker images
run it while they are built, the test session before its workers start."""

import math

import numpy as np
import scipy.ndimage

from conductivity_tf import cell_grid, coarse, domain, faces, physics, serving

KERNEL_PATHS = ("general", "binary")


def compile_kernels(paths=KERNEL_PATHS):
    """Compile the solver's numba kernels and cache them on disk (next to the sources, or in ``NUMBA_CACHE_DIR``)
    by solving small volumes on each path: "general" (volumes below ``physics.BINARY_LEVEL_VOXELS``, phase
    conductivities, potentials, cell grids, spanning channels, the descriptors of ``domain`` and ``coarse``, the
    network's blocks of voxels) and "binary" (large binary volumes). A fresh install compiles on first use, on one
    core about a minute for the general path (two with numba 0.56, the SDK images') and 20 s for the binary one;
    later processes load the cache. Run it once after installing (a container image's build, before processes
    that solve in parallel) so that parallel workers do not each compile the same kernels."""
    rng = np.random.default_rng(0)
    for path in paths:
        if path == "general":
            phases = scipy.ndimage.uniform_filter(rng.random((20, 24, 28)), 3)
            phases = np.digitize(phases, np.quantile(phases, [0.3, 0.6])).astype(np.uint8)
            physics.solve(phases > 0)
            physics.solve(phases, sigma={0: 0.0, 1: 1.0, 2: 0.1})
            physics.solve(phases > 0, axes=[0], rtol=1e-6, return_potential=True)
            cell_grid.solve_cells(rng.random((4, 5, 6, 3)) + 0.1)
            cell_grid.solve_links(*faces.face_links(phases > 0))
            faces.sealed_faces(np.stack([phases[:16, :16, :16] > 0] * 2), 8)
            physics.spanning_channels(phases[None] > 0)
            domain.describe_many(phases[None])
            for sides in (phases, phases[:-1]):      # sides all multiples of 4, and not
                coarse.renormalised_field((sides > 0).astype(np.uint8), 2)
            for k in (2, 4, 8):                        # the network's blocks of voxels (predict, bfloat16)
                serving.stem_blocks(np.zeros((1, 8, 8, 8), np.uint8), k)
        elif path == "binary":
            edge = int(math.ceil(physics.BINARY_LEVEL_VOXELS ** (1.0 / 3.0)))
            physics.solve(scipy.ndimage.uniform_filter(rng.random((edge,) * 3), 3) > 0.45, return_potential=True)
        else:
            raise ValueError("unknown kernel path {!r}; use {}".format(path, ", ".join(KERNEL_PATHS)))
