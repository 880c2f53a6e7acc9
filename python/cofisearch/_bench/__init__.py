"""The one benchmark harness: every benchmark of the project is built from these modules.

- :mod:`.measure`: the timer (medians of interleaved samples after a warm-up, wall and
  CPU clocks, BLAS settling) and the memory-bandwidth references;
- :mod:`.machine`: the description of the machine recorded beside every timing, the
  memory available, BLAS thread limits and warnings;
- :mod:`.data`: the one seed (:data:`~.data.SEED`) and the seeded codes and vectors;
- :mod:`.contenders`: cofisearch, faiss and NumPy bound to a database;
- :mod:`.checks`: result checks, on :mod:`cofisearch._reference`;
- :mod:`.plans`: the named scales shared by every entry point and the plan of
  ``cofisearch bench``;
- :mod:`.sections`, :mod:`.runner`, :mod:`.report`, :mod:`.plots`: ``cofisearch bench``
  (its sections, including the FiCo-ITR Table 7 experiment that ``bench/targets.py``
  also runs; its runner; its JSON and Markdown; its figures).

The entry points: ``cofisearch bench``, the pytest suites and scripts in ``bench/``.
Nothing here is imported by ``import cofisearch``, and nothing imports pytest; faiss,
threadpoolctl and matplotlib are used when installed.
"""
