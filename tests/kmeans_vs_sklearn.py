#!/usr/bin/env python3
"""Compare CAP's k-means segmentation with scikit-learn's on the same features.

Reads the standardized features (CSV: user_id then one column per feature, as written by
the end-to-end test from its independent batch computation) and CAP's `customer_clusters`
rows (JSON lines: user_id, cluster, distance), computes CAP's within-cluster SSE as the sum
of squared distances, fits `sklearn.cluster.KMeans(n_clusters=k, init="k-means++",
n_init=10, random_state=0)` on the same features, prints both figures as one JSON line, and
exits 1 when CAP's SSE exceeds `--max-ratio` (default 1.05) times scikit-learn's.

    python3 tests/kmeans_vs_sklearn.py --features features.csv \
        --clusters out/customer_clusters.jsonl --k 5

Also checks that both files hold exactly the same users, and recomputes CAP's SSE from the
features and CAP's own cluster labels (the centroid-free SSE: each cluster's members around
their mean), which must not exceed the SSE from the distances (means minimize it).
"""

import argparse
import csv
import json
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", required=True, help="CSV: user_id,<features...>")
    ap.add_argument("--clusters", required=True, help="customer_clusters.jsonl")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--n-init", type=int, default=10)
    ap.add_argument("--max-ratio", type=float, default=1.05)
    args = ap.parse_args()

    import numpy as np
    from sklearn.cluster import KMeans

    users = []
    rows = []
    with open(args.features, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        for rec in reader:
            users.append(int(rec[0]))
            rows.append([float(x) for x in rec[1:]])
    x = np.asarray(rows, dtype=np.float64)

    cap = {}
    with open(args.clusters) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                cap[int(r["user_id"])] = (int(r["cluster"]), float(r["distance"]))
    if set(cap) != set(users):
        missing = len(set(users) - set(cap))
        extra = len(set(cap) - set(users))
        print(f"user sets differ: {missing} users without a cluster row, {extra} rows for unknown users",
              file=sys.stderr)
        return 1

    cap_sse = float(sum(d * d for _, d in cap.values()))
    labels = np.asarray([cap[u][0] for u in users])
    # SSE of CAP's partition around its members' means (<= cap_sse up to rounding).
    partition_sse = 0.0
    for c in np.unique(labels):
        members = x[labels == c]
        partition_sse += float(((members - members.mean(axis=0)) ** 2).sum())

    started = time.perf_counter()
    km = KMeans(n_clusters=args.k, init="k-means++", n_init=args.n_init, random_state=0).fit(x)
    seconds = time.perf_counter() - started
    sk_sse = float(km.inertia_)
    ratio = cap_sse / sk_sse if sk_sse > 0 else (1.0 if cap_sse == 0 else float("inf"))
    print(json.dumps({
        "users": len(users),
        "features": header[1:],
        "k": args.k,
        "cap_sse": round(cap_sse, 6),
        "cap_partition_sse": round(partition_sse, 6),
        "sklearn_sse": round(sk_sse, 6),
        "ratio": round(ratio, 6),
        "max_ratio": args.max_ratio,
        "cap_clusters_used": int(len(np.unique(labels))),
        "sklearn_seconds": round(seconds, 3),
    }))
    if partition_sse > cap_sse * (1 + 1e-6) + 1e-6:
        print("CAP's distances are not consistent with its labels: the partition SSE exceeds "
              "the distance SSE", file=sys.stderr)
        return 1
    if ratio > args.max_ratio:
        print(f"CAP's SSE {cap_sse:.6f} exceeds {args.max_ratio} x scikit-learn's {sk_sse:.6f}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
