"""Download throughput and memory: abi against curl, same file, same loopback server, same run.

A GGUF of --size-mib (default 1 GiB) is served by an aiohttp FileResponse (sendfile, Range) in
its own process on 127.0.0.1. Each round downloads it once with `curl -o` and once with
`abi model download URL --sha256 H` (the CLI's own code path, run in a child process that
measures its resident memory), alternating which goes first. abi's time includes everything a
user waits for: connections, SHA-256 verification, the atomic rename and the sidecar with the
GGUF summary. curl only writes the bytes.

Pass: median abi rate >= 0.9 x median curl rate, and abi's peak resident memory during the
download grows by less than 64 MiB over its size before it.

    python benchmarks/download_throughput.py [--size-mib 1024] [--rounds 3] [--connections 4]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024

SERVER = """
import sys
from aiohttp import web
path = sys.argv[1]
async def serve(request):
    return web.FileResponse(path)
app = web.Application()
app.router.add_route("GET", "/files/{name}", serve)
app.router.add_route("HEAD", "/files/{name}", serve)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None)
"""


def write_gguf(path: Path, size_mib: int) -> str:
    """A valid GGUF of about size_mib MiB (16 MiB int8 tensors of random bytes); its sha256."""
    import gguf
    import numpy as np

    tensor_bytes = 16 * MiB
    count = max(1, size_mib // 16)
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_name("throughput")
    writer.add_context_length(4096)
    writer.add_block_count(count)
    writer.add_embedding_length(4096)
    writer.add_head_count(32)
    for i in range(count):
        writer.add_tensor_info(f"blk.{i}.ffn_up.weight", (tensor_bytes,), np.dtype(np.int8), tensor_bytes,
                               raw_dtype=gguf.GGMLQuantizationType.I8)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _ in range(count):
        writer.write_tensor_data(np.frombuffer(os.urandom(tensor_bytes), dtype=np.int8))
    writer.close()
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            sha.update(block)
    return sha.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the file server exited")
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("the file server did not start")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_curl(url: str, out: Path) -> dict:
    cpu = _children_cpu()
    result = subprocess.run(["curl", "-sS", "--fail", "-o", str(out), "-w", "%{size_download} %{time_total}", url],
                            capture_output=True, text=True, check=True)
    cpu = _children_cpu() - cpu
    size, seconds = result.stdout.split()
    out.unlink()
    return {"bytes": int(float(size)), "seconds": float(seconds), "cpu_s": round(cpu, 3)}


def run_abi(url: str, sha: str, home: Path, connections: int) -> dict:
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    result_file = home / "result.json"
    env = {**os.environ, "ABI_HOME": str(home), "HOME": str(home), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, __file__, "--abi-client", url, sha, str(result_file), str(connections)],
                   env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    data = json.loads(result_file.read_text())
    shutil.rmtree(home)
    return data


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def abi_client(url: str, sha: str, result_file: str, connections: int) -> None:
    """Child process: import everything, note the resident size, download, note the peak."""
    import aiohttp  # noqa: F401
    import gguf  # noqa: F401  (numpy: ~15 MiB of code and tables, not download memory)
    import huggingface_hub  # noqa: F401
    import rich.progress  # noqa: F401

    import abi_tui.models.commands  # noqa: F401  (the imports a download needs, before the baseline)
    import abi_tui.models.pull  # noqa: F401
    from abi_tui.cli import main
    from abi_tui.models import pull

    marks: dict[str, float] = {}
    pull.progress_listeners.append(lambda handle, event: marks.setdefault(event.state.value, time.perf_counter()))
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM, the peak resident size
    cpu = os.times()
    start = time.perf_counter()
    status = main(["model", "download", url, "--sha256", sha, "--connections", str(connections)])
    seconds = time.perf_counter() - start
    cpu_end = os.times()
    cpu_s = cpu_end.user - cpu.user + cpu_end.system - cpu.system
    peak = _status_kib("VmHWM")
    if status != 0:
        raise SystemExit(f"abi model download exited with {status}")
    files = list((Path(os.environ["ABI_HOME"]) / "models").rglob("*.gguf"))
    size = files[0].stat().st_size
    phases = {state: round(at - start, 3) for state, at in marks.items()}
    Path(result_file).write_text(json.dumps({"bytes": size, "seconds": seconds, "rss_before_kib": before,
                                             "rss_peak_kib": peak, "phases_s": phases,
                                             "cpu_s": round(cpu_s, 3)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--abi-client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.abi_client:
        url, sha, result_file, connections = args.abi_client
        abi_client(url, sha, result_file, int(connections))
        return 0
    if shutil.which("curl") is None:
        print("curl is needed for the baseline", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="abi-dl-bench-", dir=args.dir))
    server = None
    try:
        source = work / "served" / "model.gguf"
        source.parent.mkdir()
        print(f"writing a {args.size_mib} MiB GGUF ...", file=sys.stderr)
        sha = write_gguf(source, args.size_mib)
        port = free_port()
        url = f"http://127.0.0.1:{port}/files/model.gguf"
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(source), str(port)])
        wait_up(url, server)

        rounds = []
        load_before = os.getloadavg()
        for index in range(args.rounds):
            order = ("curl", "abi") if index % 2 == 0 else ("abi", "curl")
            row = {}
            for tool in order:
                os.sync()  # start each download without the previous one's dirty pages to flush
                if tool == "curl":
                    row["curl"] = run_curl(url, work / "curl.out")
                else:
                    row["abi"] = run_abi(url, sha, work / "abi-home", args.connections)
            rounds.append(row)
            curl_rate = row["curl"]["bytes"] / row["curl"]["seconds"]
            abi_rate = row["abi"]["bytes"] / row["abi"]["seconds"]
            row["ratio"] = abi_rate / curl_rate
            growth = (row["abi"]["rss_peak_kib"] - row["abi"]["rss_before_kib"]) / 1024
            print(f"round {index + 1}: curl {curl_rate / 1e6:7.1f} MB/s ({row['curl']['cpu_s']:.2f} s CPU)   "
                  f"abi {abi_rate / 1e6:7.1f} MB/s ({row['abi']['cpu_s']:.2f} s CPU, last byte at "
                  f"{row['abi']['phases_s'].get('verifying', 0):.2f} s of {row['abi']['seconds']:.2f} s)   "
                  f"ratio {row['ratio']:.2f}   abi RSS +{growth:.1f} MiB", file=sys.stderr)

        curl_rate = statistics.median(r["curl"]["bytes"] / r["curl"]["seconds"] for r in rounds)
        abi_rate = statistics.median(r["abi"]["bytes"] / r["abi"]["seconds"] for r in rounds)
        # Each round's two downloads ran back to back under the same machine load: the median of
        # the per-round ratios is the figure least moved by other work on the machine.
        ratio = statistics.median(r["ratio"] for r in rounds)
        growth = max((r["abi"]["rss_peak_kib"] - r["abi"]["rss_before_kib"]) / 1024 for r in rounds)
        passed = ratio >= 0.9 and growth < 64
        load = os.getloadavg()
        summary = {"size_bytes": rounds[0]["abi"]["bytes"], "connections": args.connections,
                   "curl_mb_s": round(curl_rate / 1e6, 1), "abi_mb_s": round(abi_rate / 1e6, 1),
                   "ratio": round(ratio, 3), "abi_rss_growth_mib": round(growth, 1),
                   "curl_cpu_s": statistics.median(r["curl"]["cpu_s"] for r in rounds),
                   "abi_cpu_s": statistics.median(r["abi"]["cpu_s"] for r in rounds),
                   "cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
                   "load_after": [round(x, 2) for x in load], "pass": passed, "rounds": rounds}
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print(f"median: curl {summary['curl_mb_s']} MB/s ({summary['curl_cpu_s']:.2f} s CPU), "
                  f"abi {summary['abi_mb_s']} MB/s ({summary['abi_cpu_s']:.2f} s CPU, with sha256 verification); "
                  f"per-round ratio {summary['ratio']} (need >= 0.9); abi peak RSS growth "
                  f"{summary['abi_rss_growth_mib']} MiB (need < 64); {os.cpu_count()} CPUs, load "
                  f"{summary['load_before'][0]} -> {summary['load_after'][0]}: {'PASS' if passed else 'FAIL'}")
        return 0 if passed else 1
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
