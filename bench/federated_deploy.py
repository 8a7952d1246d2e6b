"""What a deployed federated round costs: a real SuperLink and two SuperNodes on loopback.

    python bench/federated_deploy.py --encoders vit_tiny vit_small vit_base --rounds 3

For each encoder, a federation of two digits sites (the embedded sample, SimCLR, batch 8, one
local step per round, so the cost around training shows) runs through ``fmcore federate-run``
against ``flower-superlink --insecure`` and two ``flower-supernode --insecure`` processes (the
deployment tests' loopback cluster). From rounds.jsonl, for the rounds after the first: the
round's wall time, the sites' own training time (the slower site's) and the bytes each site
received and sent. The rest of the round, ``overhead = wall - training``, is then fitted over
the encoders as ``fixed + bytes / throughput`` (bytes: what one site receives plus sends; the
two sites' transfers overlap), which separates the per-round cost (a ClientApp process per
message, Flower's bookkeeping, the site's set-up) from the cost per byte. Also measured: the
start of one ClientApp process's imports (``python -c "import fmcore.federated.apps"``), which
Flower pays once per message, and the peak resident memory of each kind of process (the
SuperLink, its ServerApp, a SuperNode, a ClientApp), sampled every half second.
Prints one JSON line per federation and the fit.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the deployment tests' loopback cluster

from loopback import BIN, cluster, free_port, started_under, write_connection  # noqa: E402

ROLES = ("flower-superlink", "flwr-serverapp", "flower-supernode", "flwr-clientapp")

WORDS = [
    "domain=digits",
    "method=simclr",
    "trainer.batch_size=8",
    "trainer.num_workers=0",
    "trainer.device=cpu",
    "trainer.warmup_steps=1",
    "trainer.progress=none",
    "federated.sites=2",
    "federated.local_steps=1",
    "federated.connect_timeout=300",
    "federated.round_timeout=1800",
]


def app_process_start() -> float:
    """Seconds for a fresh Python to import fmcore's ClientApp (Flower starts one per message)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import fmcore.federated.apps"], check=True)
    return time.perf_counter() - started


def peak_memory(directory: Path, stop: threading.Event, peaks: dict[str, float]) -> None:
    """Until ``stop``: the largest resident set (MB) seen of one process of each role."""
    while not stop.wait(0.5):
        for pid in started_under(directory):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            role = next((r for r in ROLES if r in command), None)
            rss = [line for line in status.splitlines() if line.startswith("VmRSS:")]
            if role and rss:
                peaks[role] = max(peaks.get(role, 0.0), int(rss[0].split()[1]) / 1024)


def sampling(directory: Path, peaks: dict[str, float]) -> Callable[[], None]:
    stop = threading.Event()
    thread = threading.Thread(target=peak_memory, args=(directory, stop, peaks), daemon=True)
    thread.start()

    def finish() -> None:
        stop.set()
        thread.join()

    return finish


def federation(encoder: str, rounds: int, dtype: str, directory: Path) -> dict:
    port = free_port()
    address = f"127.0.0.1:{port}"
    server_dir = directory / "server"
    with cluster(directory) as running:
        superlink = [str(BIN / "flower-superlink"), "--insecure", "--port", str(port)]
        running.start("superlink", [*superlink, "--disable-runtime-dependency-installation"])
        for site in ("hospital-a", "hospital-b"):
            running.start(
                site,
                [
                    *(str(BIN / "flower-supernode"), "--insecure", "--superlink", address),
                    *("--port", str(free_port()), "--node-config"),
                    f'site-name="{site}" state-dir="{directory / "sites" / site}"',
                ],
            )
        write_connection(running, address, {"insecure": True})
        running.await_port("superlink", port)
        app = directory / "app"
        words = [
            *WORDS,
            f"encoder={encoder}",
            f"federated.rounds={rounds}",
            f"federated.update_dtype={dtype}",
            f"federated.global_dtype={dtype}",
            f"run.dir={server_dir}",
        ]
        subprocess.run(
            [sys.executable, "-m", "fmcore", "federate-app", str(app), *words], check=True
        )
        peaks: dict[str, float] = {}
        finish = sampling(directory, peaks)
        started = time.perf_counter()
        result = running.federate_run(app, timeout=7200)
        total = time.perf_counter() - started
        finish()
        if result.returncode != 0:
            raise RuntimeError(f"{encoder}: the federation failed\n{running.logs()}")
    records = [json.loads(line) for line in (server_dir / "rounds.jsonl").read_text().splitlines()]
    later = records[1:] or records
    wall = statistics.median(r["wall_seconds"] for r in later)
    training = statistics.median(max(r["site_train_seconds"].values()) for r in later)
    down = statistics.median(statistics.mean(r["bytes_down"].values()) for r in later)
    up = statistics.median(statistics.mean(r["bytes_up"].values()) for r in later)
    return {
        "encoder": encoder,
        "wire_dtype": dtype,
        "rounds": rounds,
        "round_wall_s": round(wall, 2),
        "site_train_s": round(training, 2),
        "overhead_s": round(wall - training, 2),
        "bytes_down_per_site": int(down),
        "bytes_up_per_site": int(up),
        "federation_s": round(total, 1),
        "peak_rss_mb": {role: round(mb) for role, mb in sorted(peaks.items())},
    }


def fit(rows: list[dict]) -> dict:
    """Least squares of overhead = fixed + bytes / throughput over the federations."""
    sizes = [r["bytes_down_per_site"] + r["bytes_up_per_site"] for r in rows]
    overheads = [r["overhead_s"] for r in rows]
    if len(set(sizes)) < 2:
        return {}
    slope, intercept = statistics.linear_regression(sizes, overheads)
    throughput = 1 / slope / 1e6 if slope > 0 else float("inf")
    return {"fixed_s_per_round": round(intercept, 2), "throughput_MB_per_s": round(throughput, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoders", nargs="+", default=["vit_tiny", "vit_small", "vit_base"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    print(json.dumps({"machine": platform.platform(), "app_process_start_s": app_process_start()}))
    rows = []
    for encoder in args.encoders:
        with tempfile.TemporaryDirectory(prefix=f"fmcore-deploy-{encoder}-") as directory:
            rows.append(federation(encoder, args.rounds, args.dtype, Path(directory)))
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"fit": fit(rows)}))


if __name__ == "__main__":
    main()
