"""A helper process that imports scikit-learn while the run starts, for ``classify: gmm`` / ``kmeans``.

A re-run after ``--set classify.method=gmm`` spent ~1.5 s of its ~7 s importing scikit-learn (it imports
scipy.stats and pandas) in the classify stage, while the second core waited. Where ``sendmap run`` is likely such
a re-run (:func:`sendmap.report.build.likely_rerun`) and the method clusters
with scikit-learn, the CLI starts :class:`FitHelper` first: a ``python -c`` process that imports scikit-learn
and :func:`sendmap.science.classify.fit_cluster_labels` and waits for one call (pickled on stdin). The classify
stage takes it (:func:`take`) and sends it the features; the labels are those of the same call made in the main
process (same code, same arguments). If the helper fails, the stage clusters in its own process.

One pending helper per process (:func:`start`, :func:`take`, :func:`close`): the CLI starts it, the classify stage
takes it, and the CLI ends it after the run if the stage never took it (e.g. no classification ran).
"""
from __future__ import annotations

import sys

_HELPER_CODE = "import sys; sys.path.insert(0, sys.argv[2]); from sendmap.engine.fit_helper import _serve; _serve(sys.argv[1])"
"""(argv[2]: the folder holding this process's sendmap package, so that the helper runs the same code whatever its
working folder: ``python -c`` puts that folder first on sys.path.)"""
METHODS = ("gmm", "kmeans")
"""``classify.method`` values that cluster with scikit-learn (and so gain from a helper)."""

_pending: "FitHelper | None" = None


def _serve(method: str) -> None:
    """Main of the helper: import what ``method`` needs, then read ((features, k, seed, method)) pickled on stdin,
    and write ("ok", labels) or ("error", traceback) pickled to stdout."""
    import os
    import pickle
    import traceback

    from ..science.classify import fit_cluster_labels

    try:
        if method == "kmeans":
            import sklearn.cluster  # noqa: F401
        else:
            import sklearn.mixture  # noqa: F401
    except Exception:  # noqa: BLE001 - reported when the call comes
        pass
    try:
        args = pickle.load(sys.stdin.buffer)
    except Exception:  # noqa: BLE001 - closed without a call (the run needed none)
        os._exit(0)
    try:
        result = ("ok", fit_cluster_labels(*args))
    except Exception:  # noqa: BLE001 - sent back to the main process, which fits itself
        result = ("error", traceback.format_exc())
    pickle.dump(result, sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)
    sys.stdout.flush()
    os._exit(0)  # without the interpreter's teardown


class FitHelper:
    """One helper process (see the module docstring); ``fit_labels(feats, k, seed, method)`` has the signature
    and result of :func:`sendmap.science.classify.fit_cluster_labels`."""

    def __init__(self, method: str):
        import subprocess

        self.method = method
        from pathlib import Path

        root = str(Path(__file__).resolve().parents[2])
        self.proc = subprocess.Popen([sys.executable, "-c", _HELPER_CODE, method, root], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def fit_labels(self, feats, k: int, seed: int, method: str = "gmm"):
        """The labels from the helper, or (it failed, or is gone) from :func:`fit_cluster_labels` here."""
        import pickle

        from ..science.classify import fit_cluster_labels

        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                out, _err = proc.communicate(pickle.dumps((feats, k, seed, method),
                                                          protocol=pickle.HIGHEST_PROTOCOL))
                status, payload = pickle.loads(out) if proc.returncode == 0 and out else ("error", _err)
                if status == "ok":
                    return payload
            except (OSError, ValueError, EOFError, pickle.UnpicklingError):
                proc.kill()
                proc.communicate()
        return fit_cluster_labels(feats, k, seed, method)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.communicate()
            self.proc = None


def start(cfg) -> FitHelper | None:
    """Start the pending helper where ``cfg`` clusters with scikit-learn (:data:`METHODS`) and may use a second
    core (not the synchronous scheduler, two or more cores); None otherwise or where no process can start."""
    import os

    global _pending
    close()
    if cfg.classify.method not in METHODS or cfg.compute.scheduler == "synchronous" or (os.cpu_count() or 1) < 2:
        return None
    try:
        _pending = FitHelper(cfg.classify.method)
    except OSError:
        _pending = None
    return _pending


def take(method: str) -> FitHelper | None:
    """The pending helper, if one was started for ``method`` (it is then no longer pending); else None."""
    global _pending
    helper, _pending = _pending, None
    if helper is not None and helper.method != method:
        helper.close()
        return None
    return helper


def close() -> None:
    """End the pending helper, if any (it was not used)."""
    global _pending
    helper, _pending = _pending, None
    if helper is not None:
        helper.close()
