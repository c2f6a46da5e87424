"""Pure functions and numba kernels over blocks of frames: arrays in, arrays out, no I/O.

On import, :func:`numba_blas_check_without_scipy_linalg` saves numba's first use in each process the import of
``scipy.linalg`` (its BLAS check needs only ``scipy.linalg.cython_blas``).
"""


def numba_blas_check_without_scipy_linalg() -> bool:
    """Load ``scipy.linalg.cython_blas`` (the Cython BLAS module, one extension file) into ``sys.modules`` without
    importing the ``scipy.linalg`` package; True where done.

    numba's first compile or cache load in a process imports its array implementations, which check once that a
    BLAS is there (``numba.np.arraymath._HAVE_BLAS``: ``import scipy.linalg.cython_blas``). Importing that name
    imports the whole ``scipy.linalg`` package first, and with it ``scipy._lib.array_api_compat``, which clones
    ``numpy`` and so imports ``numpy.f2py`` and ``numpy.testing``: 0.21 s of a 1-s start-up in ``python -X
    importtime``, 0.03-0.10 s of CPU in numba's first use (0.29-0.34 → 0.21-0.27 s, three alternated pairs), paid
    by every ``sendmap run`` (a re-run after a classification change: in its classify stage). The module is the
    one numba would get (kernels that call BLAS, e.g. ``np.dot``, take its function pointers); ``scipy.linalg``
    still imports normally where something asks for it. Nothing is done where ``scipy.linalg`` or numba's array
    implementations are imported already, or the file is not found (numba then imports it as before)."""
    import sys

    name = "scipy.linalg.cython_blas"
    if name in sys.modules or "scipy.linalg" in sys.modules or "numba.np.arraymath" in sys.modules:
        return False
    try:
        import importlib.machinery
        import importlib.util
        import os

        spec = importlib.util.find_spec("scipy")
        if spec is None or not spec.submodule_search_locations:
            return False
        folder = os.path.join(list(spec.submodule_search_locations)[0], "linalg")
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "cython_blas" + suffix)
            if os.path.isfile(path):
                break
        else:
            return False
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return True
    except Exception:  # noqa: BLE001 - an optimisation only: numba imports it itself
        return False


numba_blas_check_without_scipy_linalg()
