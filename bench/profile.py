"""Profile one figure in-process with pyinstrument (``pip install pyinstrument``), or measure the interceptor chain.

    python -m bench.profile session_sync 10000     # where a figure's time goes (client and server share the loop)
    python -m bench.profile authorize 3000
    python -m bench.profile chain 3000              # echo with the full interceptor chain vs no interceptors

For a running service process use py-spy instead:
``py-spy record -o central.svg --pid <pid>`` or ``py-spy dump --pid <pid>``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from functools import partial
from pathlib import Path

import grpc
from grpc import aio

from aeterna_client.channel import ClientSettings, open_channel
from bench.edge_bench import ECHO_METHOD, IN_FLIGHT, echo_handler, edge_config, run_concurrent
from bench.figures import FIGURES
from bench.suite import Env
from interceptors.chain import server_interceptors


async def chain_overhead(calls: int) -> None:
    """Echo through the edge's real server stack (interceptor chain) vs a bare aio server, same process."""
    with tempfile.TemporaryDirectory() as scratch:
        config = edge_config(Env(Path(scratch), "quick"))
        results = {}
        for name, interceptors in (("bare server", []), ("edge chain", server_interceptors(config, role="edge"))):
            server = aio.server(interceptors=interceptors, compression=grpc.Compression.Gzip)
            server.add_generic_rpc_handlers((echo_handler(),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            async with open_channel(f"127.0.0.1:{port}", ClientSettings()) as channel:
                echo: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(ECHO_METHOD)
                for _ in range(200):
                    await echo(b"x" * 64)
                rate, lat = await run_concurrent(partial(echo, b"x" * 64), calls, IN_FLIGHT)
                seq = []
                for _ in range(300):
                    loop = asyncio.get_running_loop()
                    t0 = loop.time()
                    await echo(b"x" * 64)
                    seq.append((loop.time() - t0) * 1000)
            await server.stop(0)
            results[name] = (rate, statistics.median(lat), statistics.median(seq))
        for name, (rate, p50, seq_p50) in results.items():
            print(f"{name:<12} {rate:8.0f} calls/s (32 in flight)  p50 {p50:6.2f} ms  sequential p50 {seq_p50:5.2f} ms")
        bare, full = results["bare server"], results["edge chain"]
        print(f"chain cost: throughput ratio {full[0] / bare[0]:.2f}, sequential p50 +{full[2] - bare[2]:.3f} ms")


async def profile_figure(name: str, size: int) -> None:
    from pyinstrument import Profiler  # noqa: PLC0415 - a dev tool, only needed here

    figure = next(f for f in FIGURES if f.name == name)
    with tempfile.TemporaryDirectory() as scratch:
        env = Env(Path(scratch), "quick")
        try:
            env.postgres_url()
            profiler = Profiler(async_mode="disabled")
            profiler.start()
            samples = await figure.measure(env, size)
            profiler.stop()
        finally:
            env.close()
    for sample in samples:
        print(f"{sample.metric}: {sample.value:.2f} {sample.unit} (ratio {sample.ratio:.2f})")
    print(profiler.output_text(unicode=False, color=False, show_all=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", help="a figure name, or 'chain'")
    parser.add_argument("size", type=int)
    args = parser.parse_args()
    if args.figure == "chain":
        asyncio.run(chain_overhead(args.size))
    else:
        asyncio.run(profile_figure(args.figure, args.size))


if __name__ == "__main__":
    main()
