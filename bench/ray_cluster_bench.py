#!/usr/bin/env python3
"""Ray's side of the 2-node cluster benchmark (bench/cluster_bench.sh).

Connects as a driver to a running Ray cluster (RAY_ADDRESS, on the head) whose other node
offers the custom resource `bench_remote`; every task and actor asks for 0.001 of it, so it
runs on that node. The workloads and their names are those of `mobula cluster-benchmark`,
timed with Ray's microbenchmark helper (ray._private.ray_microbenchmark_helpers.timeit: 1 s
warm-up, 4 rounds of at least 2 s, mean +- std of the per-round rates) without its 10 s idle
pause. Output: "<name> per second <mean> +- <std>".

Env: RAY_ADDRESS (e.g. 127.0.0.1:6380), BENCH_OBJECT_MIB (default 256), BENCH_ONLY
(comma-separated substrings of the names to run; default all).
"""
import os

import numpy as np
import ray
import ray._private.ray_microbenchmark_helpers as helpers

RESOURCE = {"bench_remote": 0.001}
OBJECT_BYTES = int(os.environ.get("BENCH_OBJECT_MIB", "256")) << 20
ONLY = [s for s in os.environ.get("BENCH_ONLY", "").split(",") if s]


def wanted(name):
    return not ONLY or any(s in name for s in ONLY)


def timeit(name, fn, multiplier=1):
    if wanted(name):
        helpers.timeit(name, fn, multiplier, warmup_time_sec=0)


@ray.remote(resources=RESOURCE)
def small_value():
    return b"ok"


@ray.remote(resources=RESOURCE)
def node_of_task():
    return ray.get_runtime_context().get_node_id()


@ray.remote(resources=RESOURCE)
def make_bytes(n):
    return np.ones(n, dtype=np.uint8)


@ray.remote(resources=RESOURCE)
def byte_len(data):
    return len(data)


@ray.remote(num_cpus=0, resources=RESOURCE)
class Actor:
    def small_value(self):
        return b"ok"

    def node(self):
        return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=0, resources=RESOURCE)
class AsyncActor:
    async def small_value(self):
        return b"ok"

    async def node(self):
        return ray.get_runtime_context().get_node_id()


def main():
    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"))
    driver_node = ray.get_runtime_context().get_node_id()
    remote = ray.get(node_of_task.remote())
    if remote == driver_node:
        raise SystemExit("the task ran on the driver's node: no other node offers bench_remote")

    timeit("cross-node tasks sync", lambda: ray.get(small_value.remote()))
    timeit(
        "cross-node tasks async",
        lambda: ray.get([small_value.remote() for _ in range(1000)]),
        1000,
    )
    if wanted("cross-node 1:1 actor calls"):
        a = Actor.remote()
        assert ray.get(a.node.remote()) != driver_node, "the actor is on the driver's node"
        timeit("cross-node 1:1 actor calls sync", lambda: ray.get(a.small_value.remote()))
        timeit(
            "cross-node 1:1 actor calls async",
            lambda: ray.get([a.small_value.remote() for _ in range(1000)]),
            1000,
        )
        ray.kill(a)
    if wanted("cross-node 1:1 async-actor calls"):
        a = AsyncActor.remote()
        assert ray.get(a.node.remote()) != driver_node, "the actor is on the driver's node"
        timeit("cross-node 1:1 async-actor calls sync", lambda: ray.get(a.small_value.remote()))
        timeit(
            "cross-node 1:1 async-actor calls async",
            lambda: ray.get([a.small_value.remote() for _ in range(1000)]),
            1000,
        )
        ray.kill(a)
    gb = OBJECT_BYTES / 1e9

    # A fresh object every time, so each one crosses the nodes.
    def get_remote():
        arr = ray.get(make_bytes.remote(OBJECT_BYTES))
        assert arr.nbytes == OBJECT_BYTES
        del arr

    timeit("cross-node get gigabytes", get_remote, gb)
    if wanted("cross-node task arg gigabytes"):
        data = np.ones(OBJECT_BYTES, dtype=np.uint8)

        def arg_to_remote():
            ref = ray.put(data)
            assert ray.get(byte_len.remote(ref)) == OBJECT_BYTES
            del ref

        timeit("cross-node task arg gigabytes", arg_to_remote, gb)


if __name__ == "__main__":
    main()
