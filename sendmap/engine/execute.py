"""Running a stage's per-block work on the configured scheduler, with progress.

A block task is split into ``load(item)`` (I/O: read a block of frames) and ``process(loaded)``
(numba kernels over the whole block); both are module-level functions so they pickle.

* ``threads`` (default) and ``synchronous``: blocks are processed in this process; with ``threads`` and
  a thread-safe ``process`` one block per core is in flight (each thread's numba kernels on one thread),
  else the next block is read on a background thread while the kernels work on the current one.
* ``processes``: a pool of worker processes, each running load+process with its share of the cores.
* ``distributed``: a dask.distributed client — a local cluster (``compute.n_workers``,
  ``threads_per_worker``, ``memory_limit``), SLURM jobs through dask-jobqueue (``compute.cluster: slurm``),
  or the scheduler at ``compute.address`` — running load+process per block on the workers.

Results are delivered in item order whatever the scheduler, with a bounded number of blocks in flight
(about two per worker slot), so memory is set by the block size, not by the dataset.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _load_and_process(load: Callable, process: Callable, item: Any) -> Any:
    return process(load(item))


def _init_worker(n_threads: int) -> None:
    import numba

    numba.set_num_threads(max(1, n_threads))


def thread_map(func: Callable, items, n_threads: int | None = None) -> list:
    """``[func(i) for i in items]`` on up to ``n_threads`` threads (default: one per core), for work whose
    numpy calls release the GIL; the results are the same, in order. BLAS is held to one thread per worker
    meanwhile: its own threads on top of these would fight for the same cores. (The peak fits of the 2.9 GB
    benchmark scan, 21,904 positions in 11 blocks: 0.55 s on one thread, 0.33 s on two cores.)

    >>> thread_map(lambda x: x * x, range(5), n_threads=2)
    [0, 1, 4, 9, 16]
    """
    items = list(items)
    workers = min(len(items), n_threads or os.cpu_count() or 1)
    if workers < 2:
        return [func(i) for i in items]
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(func, items))


def local_map(compute) -> Callable:
    """The map for work done in this process on arrays already in memory (e.g. the peak fits), by the compute
    config: the built-in ``map`` for ``synchronous``, else :func:`thread_map` on ``n_workers`` threads (default
    one per core; ``processes`` and ``distributed`` send only the per-block stages away)."""
    if compute.scheduler == "synchronous":
        return map
    return lambda func, items: thread_map(func, items, compute.n_workers)


def run_blocks(load: Callable, process: Callable, items: Sequence, compute, desc: str,
               on_result: Callable[[int, Any], None] | None = None, sizes: Sequence[int] | None = None,
               thread_safe: bool = False) -> list:
    """Run ``process(load(item))`` for every item; return the results in item order.

    ``compute`` is the config's compute section. ``on_result(i, result)`` is called in this process
    as each result arrives (used to write results into the store as they come, bounding memory); where
    it is given, the returned list holds None instead of results. ``sizes``: bytes each item reads, so
    the progress bar shows MB and MB/s (else it counts blocks). ``thread_safe``: ``process`` may run in
    several threads at once (its kernels are serial and release the GIL), so with ``threads`` one block
    per core is in flight instead of one block plus a read-ahead.
    """
    from tqdm.auto import tqdm  # (here: a re-run whose block stages are all kept imports neither it nor the pool's)

    items = list(items)
    results: list = [None] * len(items)
    show = bool(getattr(compute, "progress", True))
    if sizes is not None:
        bar = tqdm(total=sum(sizes), desc=desc, unit="B", unit_scale=True, unit_divisor=1000, disable=not show,
                   leave=False)
        step = list(sizes)
    else:
        bar = tqdm(total=len(items), desc=desc, unit="block", disable=not show, leave=False)
        step = [1] * len(items)

    def deliver(i, r):
        if on_result is not None:
            on_result(i, r)
        else:
            results[i] = r
        bar.update(step[i])

    scheduler = compute.scheduler
    try:
        if scheduler == "threads" and thread_safe and len(items) > 1:
            n = compute.n_workers or os.cpu_count() or 1
            with ThreadPoolExecutor(max_workers=n) as pool:
                window: dict = {}
                for i in range(len(items)):
                    for j in range(i, min(len(items), i + n + 1)):  # bounded: at most n + 1 blocks in memory
                        if j not in window:
                            window[j] = pool.submit(_load_and_process, load, process, items[j])
                    deliver(i, window.pop(i).result())
        elif scheduler in ("threads", "synchronous"):
            if scheduler == "synchronous" or len(items) < 2:
                for i, it in enumerate(items):
                    deliver(i, process(load(it)))
            else:
                with ThreadPoolExecutor(max_workers=1) as pool:
                    nxt = pool.submit(load, items[0])
                    for i in range(len(items)):
                        block = nxt.result()
                        if i + 1 < len(items):
                            nxt = pool.submit(load, items[i + 1])
                        deliver(i, process(block))
        elif scheduler == "processes":
            n = compute.n_workers or max(1, min(len(items), os.cpu_count() or 1))
            per = max(1, (os.cpu_count() or 1) // n)
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: a forked child of a process whose numba thread pool is running can crash
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker, initargs=(per,)) as pool:
                _in_order_window(lambda it: pool.submit(_load_and_process, load, process, it), items, 2 * n,
                                 lambda f: f.result(), deliver)
        elif scheduler == "distributed":
            client = get_client(compute)
            slots = sum(client.nthreads().values()) or 1

            def result(f):
                r = f.result()
                f.release()
                return r

            _in_order_window(lambda it: client.submit(_load_and_process, load, process, it, pure=False), items,
                             2 * slots, result, deliver)
        else:  # pragma: no cover - the config validator rejects other names
            raise ValueError(f"unknown scheduler {scheduler}")
    finally:
        bar.close()
    return results


def _in_order_window(submit: Callable, items: Sequence, window: int, result: Callable, deliver: Callable) -> None:
    """Keep at most ``window`` tasks in flight and deliver their results in item order: the caller's
    ``on_result`` sees blocks in scan order (the profile stage writes whole chunks of consecutive blocks), and
    finished results never pile up (in workers or here) behind a slow one."""
    futures: dict = {}
    for i in range(len(items)):
        for j in range(i, min(len(items), i + max(1, window))):
            if j not in futures:
                futures[j] = submit(items[j])
        deliver(i, result(futures.pop(i)))


_CLIENT = None
_CLIENT_SPEC = None


def get_client(compute):
    """The dask.distributed client for a compute section: connect to ``compute.address``, or start a cluster
    (``compute.cluster``: ``local`` — a LocalCluster of ``n_workers`` processes with ``threads_per_worker``
    threads and ``memory_limit`` each — or ``slurm`` — dask-jobqueue's SLURMCluster with ``cluster_options``,
    scaled to ``n_workers`` workers). One client per process and per such setting; later runs with the same
    setting reuse it (a batch, the stages of one run)."""
    global _CLIENT, _CLIENT_SPEC
    from distributed import Client, LocalCluster

    from ..errors import SendmapInputError

    spec = (compute.address, compute.cluster, compute.n_workers, compute.threads_per_worker, compute.memory_limit,
            repr(sorted(compute.cluster_options.items())))
    if _CLIENT is not None and _CLIENT_SPEC == spec and _CLIENT.status == "running":
        return _CLIENT
    close_client()
    if compute.address:
        try:
            client = Client(compute.address, timeout="20s")
        except OSError as exc:
            raise SendmapInputError(f"compute.address: cannot reach a dask scheduler at {compute.address}: {exc}") from None
    elif compute.cluster == "slurm":
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError:
            raise SendmapInputError("compute.cluster: slurm needs dask-jobqueue (pip install 'sendmap[slurm]' or "
                                    "pip install dask-jobqueue)") from None
        opts = dict(compute.cluster_options)
        if compute.memory_limit and "memory" not in opts:
            opts["memory"] = compute.memory_limit
        opts.setdefault("cores", compute.threads_per_worker)
        try:
            cluster = SLURMCluster(**opts)
        except (TypeError, ValueError) as exc:
            raise SendmapInputError(f"compute.cluster_options: SLURMCluster does not accept {opts}: {exc}") from None
        cluster.scale(compute.n_workers or 2)
        client = Client(cluster)
        client.wait_for_workers(1)
    else:
        n = compute.n_workers or max(1, min(2, os.cpu_count() or 1))
        # no spilling or pausing: a worker holds no managed data (each result goes straight to this process),
        # its memory is the block in hand; pausing on that would wait forever. Above 95 % of memory_limit the
        # nanny restarts it and the block is retried.
        import dask

        with dask.config.set({"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False,
                              "distributed.worker.memory.pause": False}):
            cluster = LocalCluster(n_workers=n, threads_per_worker=compute.threads_per_worker, processes=True,
                                   dashboard_address=None, memory_limit=compute.memory_limit or "auto")
        client = Client(cluster)
    _CLIENT, _CLIENT_SPEC = client, spec
    return client


def close_client() -> None:
    """Close the client (and the cluster this process started, if any)."""
    global _CLIENT, _CLIENT_SPEC
    if _CLIENT is None:
        return
    client, _CLIENT, _CLIENT_SPEC = _CLIENT, None, None
    cluster = getattr(client, "cluster", None)
    try:
        client.close()
        if cluster is not None:
            cluster.close()
    except Exception:  # closing is best effort
        pass


LATER_STAGE_MODULES = ("sendmap.engine.execute", "sendmap.science.mask", "sendmap.science.shadows", "sendmap.science.centre", "sendmap.science.ellipse",
                       "sendmap.science.polar_tables", "sendmap.science.peaks", "sendmap.science.peak_kernels",
                       "sendmap.science.denoise_kernels", "sendmap.science.denoise_residual", "sendmap.science.peak_one_step", "sendmap.science.box_kernels", "sendmap.science.features",
                       "sendmap.science.classify", "sendmap.science.boundaries", "sendmap.science.grain_edge", "sendmap.science.ring_sectors", "sendmap.science.phases", "sendmap.science.probability", "sendmap.science.spatial",
                       "sendmap.science.indexing", "sendmap.science.spot_context",
                       "sendmap.science.mixture", "sendmap.science.lowrank", "sendmap.science.stats", "sendmap.science.dose",
                       "sendmap.io.generic", "sendmap.report.build", "threadpoolctl")
"""The modules the stages after ingest import (0.24 s in all, scipy.ndimage alone ~0.2 s): see :func:`prefetch_imports`.
Kept by hand; ``tests/test_reprocess.py`` fails if a function here imports a sendmap module it does not load."""


def prefetch_imports(modules=LATER_STAGE_MODULES) -> None:
    """Import ``modules`` on a background thread. Called when ingest's blocks start: its threads then run numba
    kernels, blosc and file I/O without the GIL, so the imports cost little there, instead of running serially,
    with a core idle, at the start of later stages. Python's import lock makes a later import of the same module
    wait for this one; a module that fails to import here is imported (and fails) again where it is used."""
    import importlib
    import threading

    def run():
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - reported where the module is really needed
                pass

    threading.Thread(target=run, name="sendmap-prefetch-imports", daemon=True).start()


def one_numba_thread_off_main() -> None:
    """In a worker thread of the threads scheduler (one block per core), kernels run on that thread alone.

    numba's thread count is per thread, and its OpenMP layer accepts launches from several threads: one
    serial kernel per core, each with its own block's decoding, scales better than one block at a time
    spread over the cores while another thread decodes the next (1.9× vs 1.6× on 2 cores)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        import numba

        numba.set_num_threads(1)
