"""The measuring helpers of the suites, ``targets.py`` and ``cofisearch bench``.

They live in the package (``cofisearch._measure``) so that the ``cofisearch bench``
command can use them; this module re-exports them under the name the suites import.
See that module's docstring for the pieces and for the note on NumPy, faiss and BLAS.
"""

from cofisearch._measure import *  # noqa: F401,F403
from cofisearch._measure import __all__  # noqa: F401
