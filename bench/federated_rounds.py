"""What a federated round costs beyond the sites' own training, for N simulated sites.

    python bench/federated_rounds.py --sites 2 4 8 16 --rounds 4

Each federation trains a tiny SimCLR encoder on digits (one local step per round, so the server,
Flower and the site set-up dominate) in Flower's simulation runtime, once with fp32 updates and
once with bf16. From rounds.jsonl, for the rounds after the first (which includes Ray actors
starting): the round's wall time, the mean site training time, the overhead (wall time minus
the site time spread over the parallel workers) and the bytes each site sent and received.
Prints one JSON line per federation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

WORDS = [
    "domain=digits",
    "method=simclr",
    "encoder.depth=2",
    "encoder.embed_dim=64",
    "encoder.vit.num_heads=2",
    "method.hidden_dim=64",
    "method.projection_dim=32",
    "trainer.batch_size=16",
    "trainer.num_workers=0",
    "trainer.device=cpu",
    "trainer.warmup_steps=1",
    "trainer.progress=none",
    "federated.local_steps=1",
]


def federation(sites: int, rounds: int, dtype: str, directory: Path) -> dict:
    from fmcore.federated.federation_config import compose_federation, federation_words
    from fmcore.federated.simulation import simulate
    from fmcore.plugin_manager import registry

    run = directory / f"sites-{sites}-{dtype}"
    words = federation_words(
        [
            *WORDS,
            f"federated.sites={sites}",
            f"federated.rounds={rounds}",
            f"federated.update_dtype={dtype}",
            f"run.dir={run}",
            f"run.cache_dir={directory / 'cache'}",
        ]
    )
    started = time.perf_counter()
    simulate(compose_federation(words, registry()), words)
    total = time.perf_counter() - started
    records = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    later = records[1:] or records
    workers = min(sites, os.cpu_count() or 1)
    walls = [r["wall_seconds"] for r in later]
    site_times = [statistics.mean(r["site_train_seconds"].values()) for r in later]
    overheads = [r["wall_seconds"] - sum(r["site_train_seconds"].values()) / workers for r in later]
    return {
        "sites": sites,
        "update_dtype": dtype,
        "rounds": rounds,
        "round_wall_s": round(statistics.median(walls), 3),
        "site_train_s": round(statistics.median(site_times), 3),
        "overhead_s": round(statistics.median(overheads), 3),
        "bytes_up_per_site": int(statistics.mean(later[-1]["bytes_up"].values())),
        "bytes_down_per_site": int(statistics.mean(later[-1]["bytes_down"].values())),
        "total_s_with_startup": round(total, 1),
        "parallel_workers": workers,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        for sites in args.sites:
            for dtype in args.dtypes:
                print(
                    json.dumps(federation(sites, args.rounds, dtype, Path(directory))), flush=True
                )


if __name__ == "__main__":
    main()
