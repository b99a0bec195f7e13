"""Per-unit work on a Dask cluster: open a ``dask.distributed`` client from the params, map over unit chunks.

Attribution, the DEG baseline and GSEA treat every concept (or neuron) on its own, so they run on any
``dask.distributed.Client`` the caller passes (``client=``). Without one they run in this process as before.
:func:`map_chunks` sends each task only what its chunk of units needs (for attribution: the expression rows of
its prototypes and counterfactuals; for DEG: its units' activation columns, then the rows of their two groups)
and the shared inputs (the model, the embedding, the gene sets) once per worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from corelib._optional import require

if TYPE_CHECKING:
    from distributed import Client

#: Seconds to wait for a running scheduler before failing (``scheduler_address``).
CONNECT_TIMEOUT = 10


def dask_client(options: Mapping[str, Any] | None) -> Client | None:
    """A Dask client from the params' ``dask`` option, or None for the single-process path.

    Parameters
    ----------
    options
        None: no cluster. ``{"scheduler_address": "tcp://host:8786"}`` (and optionally ``timeout`` in seconds,
        default :data:`CONNECT_TIMEOUT`): attach to a running cluster, whose workers must run this environment
        (``corelib`` importable: tasks are its functions). Otherwise the keyword arguments of
        ``distributed.LocalCluster`` (``n_workers``, ``threads_per_worker``, ``memory_limit``...): start one on
        this machine, with worker processes.

    Returns
    -------
    A ``distributed.Client``; close it (or let the process exit) to stop a cluster it started.
    """
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise TypeError(
            f"The dask option must be a mapping such as {{n_workers: 2, threads_per_worker: 1}} or "
            f"{{scheduler_address: tcp://host:8786}}, not {type(options).__name__}."
        )
    Client = require("distributed", "A Dask cluster (the dask option)").Client

    options = dict(options)
    address = options.pop("scheduler_address", None)
    if address is None:
        return Client(processes=True, **options)  # the client owns the cluster: closing it stops both
    timeout = options.pop("timeout", CONNECT_TIMEOUT)
    if options:
        raise ValueError(
            f"dask: {', '.join(options)} cannot be set with scheduler_address (the running cluster has its own "
            "workers); remove them, or remove scheduler_address to start a local cluster."
        )
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as err:
        raise ConnectionError(
            f"No Dask scheduler answered at {address} within {timeout} s ({err}). Start one there "
            f"(`dask scheduler` and `dask worker {address}`), fix dask.scheduler_address, or replace it by "
            "{n_workers: 2, threads_per_worker: 1} to start a local cluster (or remove `dask` to run in one "
            "process)."
        ) from err


def map_chunks(
    client: Client,
    func: Callable[..., Any],
    units: Sequence[int],
    inputs: Callable[[Sequence[int]], tuple],
    shared: Any = None,
    *,
    bar: tqdm | None = None,
    max_chunk: int | None = None,
) -> list[tuple[Sequence[int], Any]]:
    """``func(shared, *inputs(chunk))`` for consecutive chunks of ``units`` on the cluster, in their order.

    ``shared`` is sent to every worker once (``client.scatter(..., broadcast=True)``). ``inputs(chunk)`` is
    built here just before its task is submitted and should hold only what that chunk needs; at most twice
    as many tasks as the cluster has threads are in flight, so the inputs in memory stay bounded however many
    units there are.

    Parameters
    ----------
    client
        A ``distributed.Client`` (:func:`dask_client`).
    func
        Runs on a worker; must be importable there (a module-level function of ``corelib``).
    units
        The units (any per-unit items) to split: four chunks per thread of the cluster, for balance.
    inputs
        Per-chunk arguments of ``func`` after ``shared``.
    shared
        The inputs every task shares (a model, gene sets).
    bar
        Progress bar advanced by the units of each finished chunk.
    max_chunk
        Most units per chunk (a chunk's memory on a worker).

    Returns
    -------
    ``(chunk, func's result)`` for every chunk, in the order of ``units``. A task's error is raised here.
    """
    from distributed import as_completed

    threads = max(1, sum(client.nthreads().values()))
    size = max(1, min(-(-len(units) // (4 * threads)), max_chunk or len(units)))
    chunks = [units[s : s + size] for s in range(0, len(units), size)]
    [shared_f] = client.scatter([shared], broadcast=True, hash=False)
    todo: Iterator[tuple[int, Sequence[int]]] = iter(enumerate(chunks))
    position, results = {}, [None] * len(chunks)
    finished = as_completed()

    def submit_next() -> None:
        i, chunk = next(todo, (None, None))
        if chunk is not None:
            future = client.submit(func, shared_f, *inputs(chunk), pure=False)
            position[future.key] = i
            finished.add(future)

    for _ in range(2 * threads):
        submit_next()
    for future in finished:
        i = position.pop(future.key)
        results[i] = future.result()
        future.release()
        if bar is not None:
            bar.update(len(chunks[i]))
        submit_next()
    return list(zip(chunks, results, strict=True))
