"""The program of the cold-start benchmark: one extra thread, then the first map, timed.

Run as a script in a fresh interpreter by ``scheduler.cold_start``, as a user's program
would be: its task function is defined here, and a fork server imports this file again
(the imports below run there too, so they stay those of a small program: multiprocessing
only for the Pool.map runs, before their clock starts). Prints the seconds
of the first ``map`` of ``n`` tiny calls on ``workers`` processes::

    python benchmarks/cold_program.py taskfan|Pool.map n workers
"""

import sys
import threading
import time

import taskfan


def square(x: int) -> int:
    return x * x


def main(argv: list[str]) -> int:
    name, n, workers = argv[0], int(argv[1]), int(argv[2])
    # a program's logging or monitoring thread: taskfan must not fork this process
    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
    items = list(range(n))
    if name == "taskfan":
        t0 = time.perf_counter()
        results = taskfan.map(square, items, backend="process", workers=workers, progress=False)
    else:  # the default start method: fork on Linux before 3.14, extra thread or not
        import multiprocessing  # (here: a program that uses taskfan does not import it)

        t0 = time.perf_counter()
        with multiprocessing.Pool(workers) as pool:
            results = pool.map(square, items)
    elapsed = time.perf_counter() - t0
    assert results == [x * x for x in items], name
    print(elapsed, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
