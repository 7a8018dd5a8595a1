"""Measure the Parquet output (efx/writers/parquet.py): the README's "Parquet output" figures.

Part 1, writing: 100,000 rows (--rows) of 2,304 float32 (--dim, as B6 has) through each writer
(hdf5, npy, parquet) in blocks of 64 rows (efx's batch), flush() after each block and
flush(sync=True) every efx.run.loop.SYNC_ROWS rows, as efx does; each run in a fresh process. The rows
are synthetic, shaped like pooled swish features (B6's): dense, non-negative, mostly small with a
long tail, each near one of 1,000 cluster centres (so that a row has real nearest neighbours);
made block by block from a fixed seed, never all held. Reported: seconds inside the writer,
rows/s, bytes on disk per row, the process's peak RSS (ru_maxrss; "base" is before the writer is
opened). Every format also at 20,000 rows (--small-rows): memory should not grow with rows.
Runs alternate over --rounds; medians.
Part 2, the Parquet codec of the embedding column: none, snappy, zstd, and zstd with the
BYTE_STREAM_SPLIT encoding (efx's parquet.COMPRESSION and BYTE_STREAM_SPLIT set), on REAL
features (EfficientNet-Lite0 feature vectors, 1,280-D, of scripts/real_photos.py's photos, each
also mirrored and cropped; /work/shared/models) and on 10,000 synthetic rows (--codec-rows) as in
part 1: bytes per row of the embedding column against raw float32 (4 x D), of the whole folder,
write and read (efx's reader; the median of 3 reads after each write) seconds. In one process,
variants alternating; medians.
Part 3, search on part 1's 100,000-row Parquet output: DuckDB (`array_cosine_similarity ...
ORDER BY s DESC LIMIT 10` over read_parquet('OUT/*.parquet'), the query vector looked up by its
path) against `efx similar OUT KEY -k 10`, each a fresh process, alternating over
--search-rounds; medians of wall time and peak RSS (GNU time), and whether both find the same 10
rows (DuckDB's own top 10 holds the query row itself; the check, in one more untimed run,
leaves it out, as efx does).

    python scripts/bench_parquet.py [--rows 100000] [--dim 2304] [--rounds 2]
        [--skip-write] [--skip-codecs] [--skip-search]

Times include no process start-up in parts 1 and 2 (measured inside), and all of it in part 3.
Name the CPU with the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_update import EFX, cpu  # noqa: E402

FORMATS = ("hdf5", "npy", "parquet")
BLOCK = 64  # rows per write(): efx's batch
CLUSTERS = 1000
LITE0 = os.path.join(
    os.path.dirname(os.path.dirname(HERE)), "shared", "models", "efficientnet-lite0-feature-vector"
)  # ../shared beside the clone
LITE0_SIZE = 224
# name -> (efx.writers.parquet.COMPRESSION, BYTE_STREAM_SPLIT for the embedding floats)
VARIANTS = {
    "none": ("none", False),
    "snappy": ("snappy", False),
    "zstd": ("zstd", False),
    "zstd+bss": ("zstd", True),
}
DUCKDB = r"""
import json, sys, time
import duckdb
files, key, dim, check = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "check"
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")  # it would print on stdout
start = time.perf_counter()
found = con.execute(
    f"SELECT embedding FROM read_parquet('{files}') WHERE path = $key", {"key": key}
).fetchone()
looked = time.perf_counter()
query = (
    f"SELECT path, array_cosine_similarity(embedding::FLOAT[{dim}], $q::FLOAT[{dim}]) AS s "
    f"FROM read_parquet('{files}') ORDER BY s DESC LIMIT 10"
)
hits = con.execute(query, {"q": found[0]}).fetchall()
done = time.perf_counter()
others = check and con.execute(query.replace("ORDER BY", "WHERE path <> $key ORDER BY"),
                               {"q": found[0], "key": key}).fetchall()
print(json.dumps({"lookup_seconds": looked - start, "query_seconds": done - looked,
                  "hits": hits, "others": others}))
"""


class Synthetic:
    """Rows shaped like pooled swish features: s_d * softplus(centre + noise), s_d a per-feature
    scale (log-normal); cosine ~0.73 to rows of the same cluster, ~0.31 to the others. Block
    `start` depends only on (seed, start): made on demand."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.seed = dim, seed
        self.scale = np.exp(rng.normal(np.log(0.2), 0.5, dim)).astype(np.float32)
        self.centres = 1.5 * rng.standard_normal((CLUSTERS, dim), np.float32) - 2.0

    def block(self, start: int, count: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, start])
        near = self.centres[rng.integers(0, CLUSTERS, count)]
        noisy = near + rng.standard_normal((count, self.dim), np.float32)
        return (self.scale * np.logaddexp(np.float32(0), noisy)).astype(np.float32)


def row_paths(start: int, count: int) -> list[str]:
    return [f"photos/{i:06d}.jpg" for i in range(start, start + count)]


def row_facts(paths: list[str], start: int) -> list[Any]:
    from efx.facts import Facts

    return [
        Facts(150_000 + (i * 7919) % 3_000_000, 1_700_000_000_000_000_000 + i * 1_000_003,
              hashlib.sha256(path.encode()).hexdigest())
        for i, path in enumerate(paths, start)
    ]  # fmt: skip


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_rows(fmt: str, output: str, dim: int, rows: int, block_of: Any, shard_size: int) -> float:
    """Seconds inside the writer for `rows` rows, 64 at a time, flushed as efx flushes."""
    from efx import writers
    from efx.run.loop import SYNC_ROWS

    attrs = {"feature_dim": dim, "model": "synthetic"}
    inside = time.perf_counter()
    writer = writers.open_writer(fmt, output, attrs, shard_size=shard_size)
    seconds, unsynced = time.perf_counter() - inside, 0
    for start in range(0, rows, BLOCK):
        count = min(BLOCK, rows - start)
        embeddings, paths = block_of(start, count), row_paths(start, count)
        facts = row_facts(paths, start)
        inside = time.perf_counter()
        writer.write(paths, embeddings, facts)
        unsynced += count
        sync = unsynced >= SYNC_ROWS
        writer.flush(sync=sync)
        seconds += time.perf_counter() - inside
        if sync:
            unsynced = 0
    inside = time.perf_counter()
    writer.close()
    return seconds + time.perf_counter() - inside


def disk_bytes(output: str) -> int:
    if os.path.isfile(output):
        return os.path.getsize(output)
    return sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(output)
        for name in names
    )


def remove(output: str) -> None:
    if os.path.isdir(output):
        shutil.rmtree(output)
    elif os.path.exists(output):
        os.remove(output)


# ---- children (fresh processes) ----


def child_write(spec: dict[str, Any]) -> dict[str, Any]:
    from efx import writers  # noqa: F401  (imported before "base", as below)
    from efx.run.loop import SYNC_ROWS  # noqa: F401

    if spec["fmt"] == "parquet":
        from efx.writers import parquet

        parquet.pyarrow()
    rows = Synthetic(spec["dim"], spec["seed"])
    base, had_pandas = peak_mib(), "pandas" in sys.modules
    started = time.perf_counter()
    seconds = write_rows(
        spec["fmt"], spec["output"], spec["dim"], spec["rows"], rows.block, spec["shard_size"]
    )
    return {
        "seconds": seconds,
        "wall": time.perf_counter() - started,
        "base_mib": base,
        "peak_mib": peak_mib(),
        # pyarrow imports pandas (when installed) at its first pa.array(): ~50 MiB, ~0.5 s
        "pandas_imported": "pandas" in sys.modules and not had_pandas,
    }


def embedding_leaf(dim: int) -> str:
    """How Parquet names the embedding's float column (what use_byte_stream_split takes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from efx.writers import parquet

    sink = pa.BufferOutputStream()
    pq.write_table(parquet.schema(dim, {}).empty_table(), sink)
    schema = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
    columns = [schema.column(i).path for i in range(len(schema))]
    return next(path for path in columns if path.split(".")[0] == "embedding")


def column_bytes(output: str, leaf: str) -> dict[str, Any]:
    """The embedding column's stored and uncompressed bytes over every part, its codecs and
    encodings (to prove the variant is the one asked for)."""
    import glob

    import pyarrow.parquet as pq

    stored = plain = 0
    codecs: set[str] = set()
    encodings: set[str] = set()
    for part in sorted(glob.glob(os.path.join(output, "part-*.parquet"))):
        meta = pq.ParquetFile(part).metadata
        for group in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                column = meta.row_group(group).column(c)
                if column.path_in_schema == leaf:
                    stored += column.total_compressed_size
                    plain += column.total_uncompressed_size
                    codecs.add(column.compression)
                    encodings.update(column.encodings)
    return {
        "stored": stored,
        "plain": plain,
        "codecs": sorted(codecs),
        "encodings": sorted(encodings),
    }


def child_codecs(spec: dict[str, Any]) -> dict[str, Any]:
    from efx import writers
    from efx.writers import parquet

    leaf = embedding_leaf(spec["dim"])
    own_codec, own_split = parquet.COMPRESSION, parquet.BYTE_STREAM_SPLIT
    sets: dict[str, np.ndarray] = {}
    if spec["real"]:
        sets["real"] = writers.read(spec["real"])[1]
    synthetic = Synthetic(spec["dim"], spec["seed"])
    sets["synthetic"] = np.concatenate(
        [synthetic.block(s, min(BLOCK, spec["rows"] - s)) for s in range(0, spec["rows"], BLOCK)]
    )
    found: dict[str, Any] = {"leaf": leaf, "own_codec": own_codec + ("+bss" if own_split else "")}
    warm = os.path.join(spec["work"], "codec-warm-up")  # first-call costs out of the figures
    write_rows("parquet", warm, 64, 256, Synthetic(64).block, spec["shard_size"])
    writers.read(warm)
    remove(warm)
    for name, table in sets.items():
        dim = table.shape[1]
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for round_ in range(spec["rounds"]):
            for variant in rotated(list(VARIANTS), round_):
                codec, bss = VARIANTS[variant]
                output = os.path.join(spec["work"], f"codec-{name}-{variant}")
                remove(output)
                parquet.COMPRESSION, parquet.BYTE_STREAM_SPLIT = codec, bss
                try:
                    seconds = write_rows(
                        "parquet", output, dim, len(table),
                        lambda start, count, t=table: t[start : start + count],
                        spec["shard_size"],
                    )  # fmt: skip
                finally:
                    parquet.COMPRESSION, parquet.BYTE_STREAM_SPLIT = own_codec, own_split
                reads = []
                for _ in range(3):  # the first read of a run can be 10x slower (memory faults)
                    started = time.perf_counter()
                    _, back = writers.read(output)
                    reads.append(time.perf_counter() - started)
                read = statistics.median(reads)
                if not np.array_equal(back, table):
                    raise SystemExit(f"{name} {variant}: efx read back other values")
                runs[variant].append(
                    {"write": seconds, "read": read, "folder": disk_bytes(output),
                     **column_bytes(output, leaf)}
                )  # fmt: skip
                remove(output)
        found[name] = {
            "rows": len(table),
            "dim": dim,
            "zeros": float(np.mean(table == 0)),
            "variants": {
                variant: {
                    "write_seconds": statistics.median(r["write"] for r in done),
                    "read_seconds": statistics.median(r["read"] for r in done),
                    "folder_bytes_per_row": done[0]["folder"] / len(table),
                    "embedding_bytes_per_row": done[0]["stored"] / len(table),
                    "of_raw": done[0]["stored"] / (4 * dim * len(table)),
                    "write_all": [round(r["write"], 3) for r in done],
                    "read_all": [round(r["read"], 3) for r in done],
                    "codecs": done[0]["codecs"],
                    "encodings": done[0]["encodings"],
                }
                for variant, done in runs.items()
            },
        }
    return found


def child(spec: dict[str, Any]) -> None:
    result = {"write": child_write, "codecs": child_codecs}[spec["kind"]](spec)
    print(json.dumps(result))


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"child {spec['kind']} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def rotated(items: list[Any], by: int) -> list[Any]:
    by %= len(items)
    return items[by:] + items[:by]


# ---- part 1 ----


def write_part(args: argparse.Namespace, work: str) -> tuple[list[dict[str, Any]], str]:
    """Each format at --rows and --small-rows, alternating; the last parquet output at --rows is
    kept for part 3 (its path returned)."""
    jobs = [(fmt, n) for n in (args.rows, args.small_rows) for fmt in FORMATS]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {job: [] for job in jobs}
    kept = os.path.join(work, f"parquet-{args.rows}")
    for round_ in range(args.rounds):
        for fmt, rows in rotated(jobs, round_):
            output = os.path.join(work, f"{fmt}-{rows}" + (".h5" if fmt == "hdf5" else ""))
            remove(output)
            spec = {"kind": "write", "fmt": fmt, "output": output, "rows": rows,
                    "dim": args.dim, "seed": args.seed, "shard_size": args.shard_size}  # fmt: skip
            result = run_child(spec)
            result["bytes"] = disk_bytes(output)
            runs[(fmt, rows)].append(result)
            print(f"  round {round_ + 1} {fmt:8} {rows:>7} rows: {result['seconds']:6.1f} s, "
                  f"peak {result['peak_mib']:6.0f} MiB", flush=True)  # fmt: skip
            if output != kept:
                remove(output)
    table = []
    for (fmt, rows), done in runs.items():
        seconds = statistics.median(r["seconds"] for r in done)
        table.append({
            "format": fmt, "rows": rows, "seconds": seconds, "rows_per_second": rows / seconds,
            "bytes_per_row": statistics.median(r["bytes"] for r in done) / rows,
            "base_mib": statistics.median(r["base_mib"] for r in done),
            "peak_mib": statistics.median(r["peak_mib"] for r in done),
            "seconds_all": [round(r["seconds"], 2) for r in done],
            "peak_mib_all": [round(r["peak_mib"]) for r in done],
            "pandas_imported": any(r["pandas_imported"] for r in done),
        })  # fmt: skip
    return table, kept


def print_write(table: list[dict[str, Any]], dim: int) -> None:
    print(f"\nPart 1: writing {dim}-D float32 rows, 64 per write() + flush(); raw {4 * dim} B/row")
    print(f"{'format':8} {'rows':>7} {'seconds':>8} {'rows/s':>8} {'B/row':>7} "
          f"{'base MiB':>9} {'peak MiB':>9}")  # fmt: skip
    for r in table:
        print(f"{r['format']:8} {r['rows']:>7} {r['seconds']:>8.1f} "
              f"{r['rows_per_second']:>8.0f} {r['bytes_per_row']:>7.0f} "
              f"{r['base_mib']:>9.0f} {r['peak_mib']:>9.0f}"
              + ("  (pandas imported by pyarrow)" if r["pandas_imported"] else ""))  # fmt: skip


# ---- part 2 ----


def real_features(work: str, copies: int) -> tuple[str | None, dict[str, Any]]:
    """An HDF5 output of EfficientNet-Lite0 features of the real photos (each also mirrored and
    cropped: `copies` images per photo), or None and why not."""
    from PIL import Image

    if not os.path.isdir(LITE0):
        return None, {"skipped": f"no model at {LITE0}"}
    try:
        from real_photos import real_photos

        photos = real_photos()
    except SystemExit as error:  # real_photos exits when it cannot fetch them
        return None, {"skipped": str(error)}
    folder = os.path.join(work, "real-photos")
    os.makedirs(folder, exist_ok=True)
    for number, path in enumerate(photos):
        image = Image.open(path).convert("RGB")
        w, h = image.size
        variants = [
            image,
            image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            image.crop((w // 10, h // 10, w - w // 10, h - h // 10)),  # centre 80%
            image.crop((0, 0, w * 17 // 20, h * 17 // 20)),  # top-left 85%
            image.crop((w * 3 // 20, h * 3 // 20, w, h)).transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        ][:copies]
        for v, picture in enumerate(variants):
            picture.save(os.path.join(folder, f"{number:04d}-{v}.jpg"), quality=95)
    output = os.path.join(work, "real.h5")
    done = subprocess.run(
        [EFX, "extract", folder, output, "-m", LITE0, "--image-size", str(LITE0_SIZE),
         "--json", "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"efx extract (real features) failed:\n{done.stderr}")
    summary = json.loads(done.stdout)
    return output, {
        "photos": len(photos),
        "images": summary["images"],
        "embedded": summary["embedded"],
        "copies": len(variants),
        "extract_seconds": summary["seconds"],
        "backend": summary.get("backend"),
    }


def print_codecs(found: dict[str, Any]) -> None:
    print(f"\nPart 2: the embedding column's codec (leaf column {found['leaf']!r}); "
          f"efx's default: {found['own_codec']}")  # fmt: skip
    print(f"{'rows':17} {'variant':9} {'emb B/row':>10} {'of raw':>7} {'folder B/row':>13} "
          f"{'write s':>8} {'read s':>7}  encodings")  # fmt: skip
    for name in ("real", "synthetic"):
        if name not in found:
            continue
        data = found[name]
        label = f"{name} {data['rows']}x{data['dim']}"
        for variant, r in data["variants"].items():
            print(f"{label:17} {variant:9} {r['embedding_bytes_per_row']:>10.0f} "
                  f"{r['of_raw']:>7.1%} {r['folder_bytes_per_row']:>13.0f} "
                  f"{r['write_seconds']:>8.3f} {r['read_seconds']:>7.3f}  "
                  f"{'+'.join(r['codecs'])} {','.join(r['encodings'])}")  # fmt: skip
        print(f"{'':17} (raw float32 {4 * data['dim']} B/row; exact zeros: {data['zeros']:.1%})")


# ---- part 3 ----


def timed(command: list[str], cwd: str) -> tuple[float, float, str]:
    """Wall seconds, peak RSS MiB (GNU time) and stdout of a fresh process."""
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *command], capture_output=True, text=True, cwd=cwd
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{os.path.basename(command[0])} {command[1]} … failed:\n{done.stderr}")
    return wall, int(done.stderr.strip().splitlines()[-1]) / 1024, done.stdout


def search_part(args: argparse.Namespace, output: str, work: str) -> dict[str, Any]:
    key = row_paths(args.query_row, 1)[0]
    files = os.path.join(output, "*.parquet")
    commands = {
        "duckdb": [sys.executable, "-c", DUCKDB, files, key, str(args.dim), "time"],
        "efx similar": [EFX, "similar", output, key, "-k", "10", "--json"],
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    found: dict[str, Any] = {}
    for round_ in range(args.search_rounds):
        for name in rotated(list(commands), round_):
            wall, peak, out = timed(commands[name], work)
            runs[name].append((wall, peak))
            found.setdefault(name, []).append(json.loads(out.strip().splitlines()[-1]))
    # The check (DuckDB's top 10 without the query row) in one more run, not timed.
    _, _, out = timed([*commands["duckdb"][:-1], "check"], work)
    duck, efx = json.loads(out.strip().splitlines()[-1]), found["efx similar"][-1][0]
    efx_paths = [hit["path"] for hit in efx["hits"]]
    efx_sims = [hit["similarity"] for hit in efx["hits"]]
    duck_paths = [path for path, _ in duck["others"]]
    duck_sims = [s for _, s in duck["others"]]
    return {
        "query": key,
        "rows": args.rows,
        "duckdb_seconds": statistics.median(w for w, _ in runs["duckdb"]),
        "duckdb_peak_mib": statistics.median(p for _, p in runs["duckdb"]),
        "duckdb_query_seconds": statistics.median(d["query_seconds"] for d in found["duckdb"]),
        "duckdb_lookup_seconds": statistics.median(d["lookup_seconds"] for d in found["duckdb"]),
        "efx_seconds": statistics.median(w for w, _ in runs["efx similar"]),
        "efx_peak_mib": statistics.median(p for _, p in runs["efx similar"]),
        "duckdb_first_is_query": duck["hits"][0][0] == key,
        "same_paths": duck_paths == efx_paths,
        "same_set": set(duck_paths) == set(efx_paths),
        "largest_similarity_difference": max(
            (abs(a - b) for a, b in zip(duck_sims, efx_sims, strict=False)), default=None
        ),
        "duckdb_hits": duck_paths,
        "efx_hits": efx_paths,
        "seconds_all": {name: [round(w, 2) for w, _ in r] for name, r in runs.items()},
    }


def print_search(found: dict[str, Any]) -> None:
    print(f"\nPart 3: the 10 nearest rows to {found['query']} among {found['rows']} "
          "(fresh processes, medians)")  # fmt: skip
    print(f"{'':12} {'wall s':>7} {'peak MiB':>9}")
    print(f"{'duckdb':12} {found['duckdb_seconds']:>7.2f} {found['duckdb_peak_mib']:>9.0f}   "
          f"(lookup {found['duckdb_lookup_seconds']:.2f} s, "
          f"query {found['duckdb_query_seconds']:.2f} s in-process)")  # fmt: skip
    print(f"{'efx similar':12} {found['efx_seconds']:>7.2f} {found['efx_peak_mib']:>9.0f}")
    print(f"same 10 paths in the same order: {found['same_paths']} (same set: {found['same_set']}"
          f"; DuckDB's first is the query itself: {found['duckdb_first_is_query']}; largest "
          f"similarity difference {found['largest_similarity_difference']:.2g})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--small-rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=10_000, help="rows per npy/parquet file")
    parser.add_argument("--codec-rows", type=int, default=10_000, help="synthetic rows, part 2")
    parser.add_argument("--codec-rounds", type=int, default=3)
    parser.add_argument("--real-copies", type=int, default=4, help="images per real photo, 1-5")
    parser.add_argument("--search-rounds", type=int, default=3)
    parser.add_argument("--query-row", type=int, default=None, help="default: the middle row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-write", action="store_true")
    parser.add_argument("--skip-codecs", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    args.query_row = args.rows // 2 if args.query_row is None else args.query_row
    began = time.perf_counter()
    results: dict[str, Any] = {"cpu": cpu(), "rows": args.rows, "dim": args.dim}
    print(f"CPU: {results['cpu']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="efx-parquet-") as work:
        output = None
        if not args.skip_write:
            results["write"], output = write_part(args, work)
        if not args.skip_codecs:
            real, results["real"] = real_features(work, args.real_copies)
            spec = {"kind": "codecs", "real": real, "rows": args.codec_rows, "dim": args.dim,
                    "seed": args.seed, "rounds": args.codec_rounds, "work": work,
                    "shard_size": args.shard_size}  # fmt: skip
            results["codecs"] = run_child(spec)
            print(f"real features: {json.dumps(results['real'])}", flush=True)
        if not args.skip_search:
            if output is None:  # part 1 skipped: one Parquet output for the search
                output = os.path.join(work, f"parquet-{args.rows}")
                run_child({"kind": "write", "fmt": "parquet", "output": output,
                           "rows": args.rows, "dim": args.dim, "seed": args.seed,
                           "shard_size": args.shard_size})  # fmt: skip
            results["search"] = search_part(args, output, work)
    if "write" in results:
        print_write(results["write"], args.dim)
    if "codecs" in results:
        print_codecs(results["codecs"])
    if "search" in results:
        print_search(results["search"])
    results["total_seconds"] = round(time.perf_counter() - began, 1)
    print(f"\nCPU: {results['cpu']}; {results['total_seconds']:.0f} s in all")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
