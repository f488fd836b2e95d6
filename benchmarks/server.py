"""HTTP serving throughput: `rerankit serve` on loopback against the in-process Reranker.

    python benchmarks/server.py [--model outputs/demo] [--requests 64] [--clients 1 8 32]
                                [--backends torch openvino onnx]

Each request is a SQuAD question with its BM25 top-20 paragraphs (20 documents) in the
Cohere v2 shape. For each client count, N concurrent clients (asyncio + httpx, one process)
send the same fixed list of requests to a real server process; the server runs once with
cross-request batching and once without. The in-process figure scores the same pairs with
``Reranker.score`` one request at a time and all at once. Every figure is the median of
``--repeats`` passes. Reports requests/s, pairs/s,
p50/p99 latency and errors, per runtime (``--backends``; an export with graphs runs them, other
folders are converted at load; ``auto`` runs what ``Reranker.load`` picks, a run folder's own
graphs included) against the in-process rate of the same runtime; writes
benchmarks/results/<--name>.{json,md} (``server`` by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from inference import load_pairs  # noqa: E402
from machine import cpu_line  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, dtype: str, cross: bool, backend: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "rerankit",
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--backend",
        backend,
    ] + ["--cross-batching" if cross else "--no-cross-batching"]
    return wait_healthy(cmd, port)


def wait_healthy(cmd: list[str], port: int) -> tuple[subprocess.Popen, str]:
    """Start ``cmd`` (a server on ``port``) offline and wait for its /health to answer 200."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, HF_HUB_OFFLINE="1")
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not become healthy")


async def load(base: str, bodies: list[dict], clients: int, route: str = "/v2/rerank") -> dict:
    """Send every body once with ``clients`` concurrent senders; time each request."""
    latencies: list[float] = []
    errors = 0
    pending = list(enumerate(bodies))

    async def client(session: httpx.AsyncClient) -> None:
        nonlocal errors
        while pending:
            _, body = pending.pop()
            start = time.perf_counter()
            try:
                response = await session.post(f"{base}{route}", json=body)
                ok = response.status_code == 200 and len(response.json()["results"]) == len(body["documents"])
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - start
    pairs = sum(len(b["documents"]) for b in bodies)
    latencies.sort()
    return {
        "requests_per_s": round(len(bodies) / wall, 2),
        "pairs_per_s": round(pairs / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        "errors": errors,
        "wall_s": round(wall, 2),
    }


def measure(args, backend: str, queries, candidates, bodies, pairs) -> list[dict]:
    """In-process and served rates of one runtime; the server's against the in-process one."""
    from rerankit import Reranker

    reranker = Reranker.load(args.model, dtype=args.dtype, backend=backend)
    reranker.score(pairs[:40])  # warm-up

    def rate(run) -> float:  # median pairs/s of args.repeats passes
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
        return len(pairs) / statistics.median(seconds)

    per_request = rate(
        lambda: [reranker.score([(q, d) for d in docs]) for q, docs in zip(queries, candidates)]
    )
    all_at_once = rate(lambda: reranker.score(pairs))
    rows = [
        {
            "backend": backend,
            "setup": "in-process Reranker.score, one request at a time",
            "clients": 1,
            "pairs_per_s": round(per_request, 1),
        },
        {
            "backend": backend,
            "setup": "in-process Reranker.score, all pairs in one call",
            "clients": 1,
            "pairs_per_s": round(all_at_once, 1),
        },
    ]
    for cross in (True, False):
        proc, base = start_server(args.model, args.dtype, cross, backend)
        try:
            asyncio.run(load(base, bodies[:8], 4))  # warm-up
            for clients in args.clients:
                result = served(base, bodies, clients, args.repeats)
                rows.append(
                    {
                        "backend": backend,
                        "setup": f"rerankit serve, cross-request batching {'on' if cross else 'off'}",
                        "clients": clients,
                        **result,
                    }
                )
                print(rows[-1], flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    in_process = rows[1]["pairs_per_s"]
    for row in rows[2:]:
        row["vs_in_process"] = round(row["pairs_per_s"] / in_process, 2)
    by = {(r["setup"], r["clients"]): r for r in rows}
    for clients in args.clients:
        on = by[("rerankit serve, cross-request batching on", clients)]
        off = by[("rerankit serve, cross-request batching off", clients)]
        on["vs_no_cross_batching"] = round(on["pairs_per_s"] / off["pairs_per_s"], 2)
    return rows


def served(base: str, bodies: list[dict], clients: int, repeats: int, route: str = "/v2/rerank") -> dict:
    """The pass with the median pairs/s of ``repeats`` passes of ``load``."""
    passes = sorted(
        (asyncio.run(load(base, bodies, clients, route)) for _ in range(repeats)),
        key=lambda r: r["pairs_per_s"],
    )
    return passes[len(passes) // 2]


def measure_infinity(args, bodies: list[dict], rows: list[dict]) -> list[dict]:
    """The serving peer Infinity (``infinity_emb v2``, engine torch, CPU) on the same merged
    model and requests, against rerankit's torch in-process rate."""
    port = free_port()
    cmd = [args.infinity, "v2", "--model-id", args.model, "--engine", "torch", "--device", "cpu"]
    proc, base = wait_healthy([*cmd, "--port", str(port)], port)
    bodies = [{**body, "model": args.model} for body in bodies]
    out = []
    try:
        asyncio.run(load(base, bodies[:8], 4, "/rerank"))  # warm-up
        for clients in args.clients:
            result = served(base, bodies, clients, args.repeats, "/rerank")
            out.append(
                {"backend": "torch", "setup": "Infinity server (engine torch)", "clients": clients, **result}
            )
            print(out[-1], flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    torch_in_process = next(
        (r["pairs_per_s"] for r in rows if r["backend"] == "torch" and "all pairs" in r["setup"]), None
    )
    for row in out:
        if torch_in_process:
            row["vs_in_process"] = round(row["pairs_per_s"] / torch_in_process, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "outputs/demo"))
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3, help="Passes per figure (the median is kept).")
    parser.add_argument(
        "--infinity",
        default=None,
        help="Path of an infinity_emb executable (its own environment) to serve the model too.",
    )
    parser.add_argument(
        "--backends", nargs="+", default=["torch"], choices=["auto", "torch", "openvino", "onnx"]
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--name", default="server", help="Results file name (without .md/.json).")
    args = parser.parse_args()

    queries, candidates, _, _ = load_pairs(args.requests, args.docs, seed=1)
    bodies = [{"model": "rerankit", "query": q, "documents": docs} for q, docs in zip(queries, candidates)]
    pairs = [(q, d) for q, docs in zip(queries, candidates) for d in docs]

    rows = []
    for backend in args.backends:
        rows += measure(args, backend, queries, candidates, bodies, pairs)
    if args.infinity:
        rows += measure_infinity(args, bodies, rows)

    table = [
        "| backend | setup | clients | requests/s | pairs/s | p50 ms | p99 ms | errors | × in-process "
        "| × no cross-batching |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['backend']} | {r['setup']} | {r['clients']} | {r.get('requests_per_s', '')} | "
            f"{r['pairs_per_s']} | "
            f"{r.get('p50_ms', '')} | {r.get('p99_ms', '')} | {r.get('errors', '')} | "
            f"{r.get('vs_in_process', '')} | {r.get('vs_no_cross_batching', '')} |"
        )
    import datetime

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    text = f"CPU: {cpu_line()}\n\n" + "\n".join(table)
    print(text)
    meta = {
        "date": datetime.date.today().isoformat(),
        "commit": commit.stdout.strip(),
        "cpu": cpu_line(),
        "requests": len(bodies),
        "docs_per_request": args.docs,
        "pairs": len(pairs),
        "model": args.model,
        "dtype": args.dtype,
        "backends": args.backends,
        "infinity": args.infinity,
        "repeats": args.repeats,
        "cores": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(
        f"# Serving throughput ({len(bodies)} requests × {args.docs} documents, {meta['cores']} cores, "
        f"dtype {args.dtype}; {meta['date']}, commit {meta['commit']})\n\n{text}\n"
    )


if __name__ == "__main__":
    main()
