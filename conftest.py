"""Settings for every test process (``tests/`` and ``parity_tests/``), applied before torch or JAX starts.

One compute thread per process: the suite runs under ``pytest -n 2`` on small CPUs, and each worker
(and each subprocess it starts: torchrun, the CLI) running its own thread pool oversubscribes the
cores (measured on 2 cores: 21 min 50 s of wall time with the pools, 13 min 40 s without).
"""

import os

for _key, _value in {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                     "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}.items():
    os.environ.setdefault(_key, _value)
