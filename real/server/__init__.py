"""The model server: one process = one replica serving one model version over the Open
Inference Protocol (KServe v2 / Triton REST).

OPENBLAS_NUM_THREADS is pinned before anything imports numpy: a replica owns one core's worth of
model time, and OpenBLAS's own thread pool would fight the other replicas and the load generator
for the box's 2 cores, making timings noisy.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
