"""Peer for the namespace benchmark: a local Jupyter kernel (ipykernel) started
with jupyter_client, timed from start to the first result of `1 + 1`, and a
warm cell round trip. Prints one JSON object: {"first_result_s": [...], "warm_s": [...]}.

    python3 jupyter_first_result.py RUNS WARM_RUNS
"""
import json
import sys
import time

from jupyter_client.manager import start_new_kernel


def run(client, code):
    msg_id = client.execute(code)
    result = None
    while True:
        msg = client.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "execute_result":
            result = msg["content"]["data"]["text/plain"]
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return result


def main():
    runs, warm_runs = int(sys.argv[1]), int(sys.argv[2])
    first, warm = [], []
    for i in range(runs):
        started = time.perf_counter()
        manager, client = start_new_kernel(kernel_name="python3")
        assert run(client, "1 + 1") == "2"
        first.append(time.perf_counter() - started)
        if i == 0:
            run(client, "x = 0")
            for _ in range(warm_runs):
                started = time.perf_counter()
                assert run(client, "x += 1; x") is not None
                warm.append(time.perf_counter() - started)
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    print(json.dumps({"first_result_s": first, "warm_s": warm}))


main()
