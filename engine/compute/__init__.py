"""Where the data-parallel stages run: this process's cores, or the workers of a Dask cluster.

``[compute] scheduler = "local"`` (the default) keeps every stage in this process, on its own
threads, with no Dask import. A Dask scheduler address (``tcp://host:8786``, or ``--scheduler``)
sends the stages that split into independent chunks to the cluster's workers:

- decoding and resizing images into the run's image arrays (``engine.data.ImageCache``),
- fingerprinting for the integrity audit (``engine.integrity.hashing.fingerprint_files``),
- ``auditrun evaluate``'s predictions and Grad-CAM maps (``engine.compute.tasks``).

Workers read the images from the same paths the client sees (a shared file system) and send
back arrays; the client writes the run's files, so everything written stays under its output
root. Chunks go out a few per worker at a time and come back in order, so the client holds a
bounded number of results whatever the data's size. Training stays with ``tf.distribute``.

Stages ask :func:`current` for the cluster and call :func:`map_ordered`; the workflow opens it with
``with compute.using(address): ...`` around the run, as ``tf.distribute`` strategies are scoped.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from engine.errors import InputError

LOCAL = "local"
#: Chunks in flight per worker thread: enough to keep workers busy while the client writes.
AHEAD_PER_THREAD = 2


@dataclass
class Cluster:
    """A connected Dask client and what the log says about it."""

    address: str
    client: Any  # distributed.Client
    threads: int  # worker threads across the cluster when it connected

    def describe(self) -> str:
        n = len(self.client.scheduler_info(n_workers=-1).get("workers", {}))
        return f"Dask scheduler {self.address}: {n} workers, {self.threads} threads"


_current: contextvars.ContextVar[Cluster | None] = contextvars.ContextVar("auditrun_cluster", default=None)


def current() -> Cluster | None:
    """The cluster stages should use, or None for this process."""
    return _current.get()


def check_address(address: str, key: str = "compute.scheduler") -> str:
    """``address`` if it is "local" or a Dask address (``tcp://``, ``tls://``, ``inproc://``,
    ``ucx://``); InputError naming ``key`` otherwise."""
    if address == LOCAL or any(address.startswith(p) for p in ("tcp://", "tls://", "inproc://", "ucx://")):
        return address
    raise InputError(f"{key}: {address!r} is neither \"local\" nor a Dask scheduler address such as "
                     "\"tcp://host:8786\"")


@contextlib.contextmanager
def using(address: str | None, echo: Callable[[str], None] | None = None, timeout: float = 30) -> Iterator[Cluster | None]:
    """Connect to the scheduler at ``address`` for the block (None or "local": no cluster).

    InputError (exit 2) when Dask is not installed or the scheduler cannot be reached."""
    if address in (None, LOCAL):
        yield None
        return
    check_address(address)
    try:
        from distributed import Client
    except ImportError:
        raise InputError(f"compute.scheduler = {address!r} needs Dask: pip install \"auditrun[dask]\"") from None
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise InputError(f"cannot reach the Dask scheduler {address!r}: {exc}") from None
    try:
        info = client.scheduler_info(n_workers=-1).get("workers", {})
        threads = sum(int(w.get("nthreads", 1)) for w in info.values()) or 1
        cluster = Cluster(address, client, threads)
        if echo is not None:
            echo(f"compute: {cluster.describe()}")
        token = _current.set(cluster)
        try:
            yield cluster
        finally:
            _current.reset(token)
    finally:
        client.close()


def map_ordered(fn: Callable, chunks: Sequence, *, cluster: Cluster, progress: Callable[[int], None] | None = None,
                sizes: Sequence[int] | None = None, **kwargs) -> Iterator[Any]:
    """``fn(chunk, **kwargs)`` for every chunk on the cluster's workers, yielded in chunk order.

    At most ``AHEAD_PER_THREAD`` chunks per worker thread are in flight, so neither the client nor
    the workers hold more than that many results. ``progress(n_done)`` is called with the running
    count of ``sizes`` (default: ``len(chunk)``) as each result arrives in order. A task's
    exception is raised here, as the local path would raise it.
    """
    from collections import deque

    client = cluster.client
    ahead = max(1, AHEAD_PER_THREAD * cluster.threads)
    sizes = list(sizes) if sizes is not None else [len(c) for c in chunks]
    shared = {k: client.scatter(v, broadcast=True) if _large(v) else v for k, v in kwargs.items()}
    pending: deque = deque()
    done, nxt = 0, 0
    try:
        while nxt < len(chunks) or pending:
            while nxt < len(chunks) and len(pending) < ahead:
                pending.append(client.submit(fn, chunks[nxt], **shared, pure=False))
                nxt += 1
            future = pending.popleft()
            result = future.result()
            done += sizes[nxt - len(pending) - 1]
            if progress is not None:
                progress(done)
            yield result
    finally:
        for f in pending:
            f.cancel()


def chunks(items: Sequence, size: int) -> list:
    """``items`` cut into consecutive slices of ``size`` (the last one shorter): one task each."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def _large(value) -> bool:
    """Arguments worth sending once to every worker instead of with every task."""
    return isinstance(value, (set, frozenset, dict, list)) and len(value) > 1000


__all__ = ["Cluster", "LOCAL", "check_address", "chunks", "current", "map_ordered", "using"]
