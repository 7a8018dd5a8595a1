#!/usr/bin/env bash
# autofaiss builds an index from efx's Parquet output, as it is (the README's "Parquet" section).
#
# autofaiss pins numpy<2 and pandas<3, which efx's environment (TensorFlow 2.21, numpy 2) does
# not have, so it gets a venv of its own; pyarrow 26 needs numpy 2 without saying so to pip, so
# pyarrow<26 is pinned beside it. efx's own venv writes a 3,000-row output with failures (whose
# .efx/failures.pq a `**/*.parquet` listing must not take for data), then autofaiss indexes it
# with the path column as ids, and the index is checked: every row, and row 0 finds itself.
#
#     bash scripts/check_autofaiss.sh [WORK_FOLDER]     (needs the package registry; ~2 min)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d)}"
python3 -m venv "$work/afenv"
"$work/afenv/bin/pip" install --quiet autofaiss 'pyarrow<26'
.venv/bin/python - "$work/out.parquet" <<'EOF'
import sys
import numpy as np
from efx import writers
rng = np.random.default_rng(1)
writer = writers.open_writer("parquet", sys.argv[1], {"feature_dim": 2304, "model": "synthetic"},
                             shard_size=1000)
for start in range(0, 3000, 500):
    names = [f"photos/{i:06d}.jpg" for i in range(start, start + 500)]
    writer.write(names, np.abs(rng.standard_normal((500, 2304), dtype=np.float32)))
    writer.fail(f"photos/broken-{start}.jpg", "truncated or corrupt JPEG")
writer.close()
EOF
"$work/afenv/bin/autofaiss" build_index --embeddings="$work/out.parquet" \
    --index_path="$work/knn.index" --index_infos_path="$work/infos.json" \
    --file_format=parquet --embedding_column_name=embedding --id_columns='["path"]' \
    --ids_path="$work/ids" --metric_type=ip >"$work/autofaiss.log" 2>&1
"$work/afenv/bin/python" - "$work" <<'EOF'
import glob, sys
import faiss, numpy as np, pyarrow.parquet as pq
work = sys.argv[1]
index = faiss.read_index(f"{work}/knn.index")
first = pq.read_table(f"{work}/out.parquet/part-00000.parquet")["embedding"]
vector = np.stack(first.to_numpy(zero_copy_only=False)[:1]).astype("float32")
_, rows = index.search(vector, 1)
ids = pq.read_table(sorted(glob.glob(f"{work}/ids/*.parquet"))[0]).to_pylist()
assert index.ntotal == 3000 and rows[0][0] == 0, (index.ntotal, rows)
print(f"autofaiss: {index.ntotal} vectors of {index.d}, {type(index).__name__}; row 0 finds "
      f"itself; ids[0] = {ids[0]}")
EOF
"$work/afenv/bin/pip" list 2>/dev/null | grep -iE '^(autofaiss|embedding-reader|numpy|pyarrow|faiss-cpu) '
