"""taskfan in one minute: a real workload, a failure with its traceback, a retry, a report,
and a worker process that dies without taking the run with it.

The workload: 400 text documents (built from an embedded paragraph) are each compressed
with zlib and their words counted. zlib releases the GIL while it compresses, so the
thread backend runs them truly in parallel. Document 123 is corrupt (it is not UTF-8),
and the "upload" step fails once for a few documents, then succeeds when retried.

Then the checksums of the same documents are computed in worker processes, where one
task kills its own worker (as a crashing C extension would): that task alone fails.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import zlib
from collections import Counter

import taskfan

PARAGRAPH = """Many independent tasks can run at once when each of them waits on something:
a network call, a disk, a subprocess, or a compressor that releases the interpreter lock.
The loop that runs them should not lose a result, should say which input failed and why,
should retry what failed by chance, and should stop at once when asked to."""

CORRUPT = 123
FLAKY = {7, 42, 99}
CRASH = 250


def make_documents(count: int) -> list[bytes]:
    words = PARAGRAPH.split()
    rng = random.Random(2024)
    docs = [" ".join(rng.choices(words, k=20_000)).encode() for _ in range(count)]
    docs[CORRUPT] = b"\xff\xfe not text" + docs[CORRUPT]
    return docs


class FlakyUpload:
    """Stands in for an API that fails now and then: the first try of a few documents."""

    def __init__(self) -> None:
        self._tried: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, number: int) -> None:
        with self._lock:
            first = number not in self._tried
            self._tried.add(number)
        if first and number in FLAKY:
            raise ConnectionError(f"upload of document {number} was reset; try again")


def analyse(number: int, raw: bytes, upload: FlakyUpload) -> dict[str, object]:
    text = raw.decode("utf-8")  # document 123 fails here
    packed = zlib.compress(raw, 9)
    top, count = Counter(text.split()).most_common(1)[0]
    upload(number)
    return {"doc": number, "ratio": round(len(raw) / len(packed), 2), "top": top, "n": count}


def checksum(number: int, raw: bytes) -> int:
    if number == CRASH:
        os._exit(139)  # what a segfaulting C library does to its process
    return zlib.crc32(raw)


def crash_proof(docs: list[bytes]) -> bool:
    print("\nchecksums in worker processes; the task for document", CRASH, "kills its worker")
    sums = taskfan.starmap(
        checksum,
        enumerate(docs),
        backend="process",
        errors="return",
        progress=True,
        desc="checksum",
    )
    crashed = [i for i, s in enumerate(sums) if isinstance(s, taskfan.WorkerCrashed)]
    print(f"document {CRASH}: {sums[CRASH]}")
    print(f"the other {len(sums) - len(crashed)} checksums came back; crashed: {crashed}")
    return crashed == [CRASH] and sums[0] == zlib.crc32(docs[0])


def main() -> int:
    docs = make_documents(400)
    upload = FlakyUpload()
    runner = taskfan.Runner(
        workers=8,
        retries=2,
        retry_on=ConnectionError,  # a corrupt file stays corrupt: do not retry that
        backoff=0.05,
        progress=True,
        desc="analyse",
    )
    for number, raw in enumerate(docs):
        runner.add(number, analyse, number, raw, upload)
    results = runner.run()

    print(f"\nreport: {results.report}")
    print(f"document 0: {results[0]}")
    failed = results.outcomes[CORRUPT]
    print(
        f"\ndocument {CORRUPT} {failed.status} after {failed.attempts} attempt(s); "
        f"its worker traceback:\n{failed.traceback}"
    )
    retried = sorted(k for k, o in results.outcomes.items() if o.attempts > 1)
    print(f"retried and recovered: documents {retried}")

    as_intended = (
        list(results.failed) == [CORRUPT]
        and isinstance(results[CORRUPT], UnicodeDecodeError)
        and retried == sorted(FLAKY)
        and results.report.ok == len(docs) - 1
    )
    as_intended = crash_proof(docs) and as_intended
    print("\ndemo ran as intended" if as_intended else "\ndemo did NOT run as intended")
    return 0 if as_intended else 1


if __name__ == "__main__":
    sys.exit(main())
