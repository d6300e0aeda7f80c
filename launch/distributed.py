"""Multi-host start-up: `jax.distributed.initialize()` where a cluster is detected.

JAX detects TPU VM pods and SLURM jobs itself; an explicit coordinator comes from the environment
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), as the launch scripts set it.
"""

from __future__ import annotations

import os

import jax


def cluster_detected() -> bool:
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
        return True
    return bool(env.get("TPU_WORKER_HOSTNAMES")) and "," in env.get("TPU_WORKER_HOSTNAMES", "")


def maybe_initialize_distributed() -> bool:
    if not cluster_detected():
        return False
    env = os.environ
    kwargs = {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = dict(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
        )
    jax.distributed.initialize(**kwargs)
    return True
