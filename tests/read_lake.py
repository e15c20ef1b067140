"""Independent reader of CAP's gold Parquet tables (pyarrow and DuckDB).

    read_lake.py LAKE OUT TABLE...
    read_lake.py --s3-endpoint http://HOST:PORT s3://BUCKET/PREFIX OUT TABLE...

With --s3-endpoint the lake is first copied out of the S3-compatible server with boto3 (an
independent S3 client; credentials `test`/`test`), then checked as below.

For each TABLE, checks the lake under LAKE against the JSON-lines file sink's output of the
same run under OUT (`<table>.jsonl`, `<table>.changelog.jsonl`):

- `gold/<table>/snapshot/snapshot.parquet`, read with pyarrow, holds exactly the rows of the JSON
  snapshot, in the same (key) order, with the documented Arrow types (decimal128(18, 2)
  money, date32 days, timestamp[ms, UTC] instants);
- the changelog files, read with DuckDB over a glob, hold exactly the lines the JSON
  changelog implies: per change, a diff -1 line with the key's old row (if it had one), then
  a diff +1 line with its new row (if it has one), numbered by seq within the epoch;
- summing diff per row over the changelog (in SQL) gives the snapshot.

Prints one line per table and exits 1 naming the first difference.
"""

import datetime
import decimal
import json
import os
import sys

import duckdb
import pyarrow.parquet as pq

TYPES = {
    "bool": "bool",
    "u_int8": "uint8",
    "u_int32": "uint32",
    "u_int64": "uint64",
    "int64": "int64",
    "float64": "double",
    "text": "string",
    "date": "date32[day]",
    "timestamp": "timestamp[ms, tz=+00:00]",
    "money": "decimal128(18, 2)",
}


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def canon(v):
    """A value in one comparable form, whichever reader produced it."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, datetime.datetime):
        v = v.astimezone(datetime.timezone.utc)
        text = v.strftime("%Y-%m-%dT%H:%M:%S")
        if v.microsecond:
            text += ".%03d" % (v.microsecond // 1000)
        return text + "Z"
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, (int, float, decimal.Decimal)):
        d = decimal.Decimal(repr(v)) if isinstance(v, float) else decimal.Decimal(v)
        return str(d.normalize()) if d != 0 else "0"
    return repr(v)


def canon_row(row, columns):
    return tuple(canon(row.get(c)) for c in columns)


def json_rows(path):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line, parse_float=decimal.Decimal))
    return rows


def check_table(lake, out, table):
    base = os.path.join(lake, "gold", table)
    with open(os.path.join(base, "_schema.json"), encoding="utf-8") as f:
        schema = json.load(f)
    columns = [c["name"] for c in schema["columns"]]

    snap = pq.read_table(os.path.join(base, "snapshot", "snapshot.parquet"))
    for c in schema["columns"]:
        got = str(snap.schema.field(c["name"]).type)
        if got != TYPES[c["type"]]:
            fail(f"{table}.{c['name']}: Arrow type {got}, expected {TYPES[c['type']]}")
    if snap.column_names != columns:
        fail(f"{table}: snapshot columns {snap.column_names}, expected {columns}")
    parquet_rows = [canon_row(r, columns) for r in snap.to_pylist()]
    want_rows = [canon_row(r, columns) for r in json_rows(os.path.join(out, f"{table}.jsonl"))]
    if parquet_rows != want_rows:
        for i, (a, b) in enumerate(zip(parquet_rows, want_rows)):
            if a != b:
                fail(f"{table}: snapshot row {i} is {a}, the file sink has {b}")
        fail(f"{table}: snapshot has {len(parquet_rows)} rows, the file sink {len(want_rows)}")

    # The changelog lines the JSON changelog implies.
    expected = []
    current = {}
    seq_of = {}
    for line in json_rows(os.path.join(out, f"{table}.changelog.jsonl")):
        epoch = int(line["epoch"])
        key = json.dumps(line["key"], sort_keys=True)
        seq = seq_of.get(epoch, 0)
        old = current.pop(key, None)
        if old is not None:
            expected.append((epoch, seq, -1, key, old))
            seq += 1
        if line["row"] is not None:
            new = canon_row(line["row"], columns)
            current[key] = new
            expected.append((epoch, seq, 1, key, new))
            seq += 1
        seq_of[epoch] = seq

    glob = os.path.join(base, "changelog", "part-*.parquet")
    con = duckdb.connect()
    have_files = any(n.startswith("part-") for n in os.listdir(os.path.join(base, "changelog"))) \
        if os.path.isdir(os.path.join(base, "changelog")) else False
    got = []
    if have_files:
        cur = con.execute(f"SELECT * FROM read_parquet('{glob}') ORDER BY epoch, seq")
        names = [d[0] for d in cur.description]
        for values in cur.fetchall():
            r = dict(zip(names, values))
            key = json.dumps(json.loads(r["key"]), sort_keys=True)
            got.append((r["epoch"], r["seq"], r["diff"], key, canon_row(r, columns)))
    if got != expected:
        for i, (a, b) in enumerate(zip(got, expected)):
            if a != b:
                fail(f"{table}: changelog line {i} is {a}, the file sink implies {b}")
        fail(f"{table}: changelog has {len(got)} lines, the file sink implies {len(expected)}")
    if have_files:
        cols = ", ".join(f'"{c}"' for c in columns)
        summed = con.execute(
            f"SELECT {cols}, sum(diff) AS n FROM read_parquet('{glob}') "
            f"GROUP BY ALL HAVING sum(diff) <> 0"
        ).fetchall()
        if sorted(tuple(canon(v) for v in r[:-1]) for r in summed) != sorted(want_rows) or any(
            r[-1] != 1 for r in summed
        ):
            fail(f"{table}: summing diff over the changelog does not give the snapshot")
    files = len(os.listdir(os.path.join(base, "changelog"))) if have_files else 0
    print(f"{table}: {len(parquet_rows)} rows, {len(got)} changelog lines in {files} files: equal")


def mirror_s3(endpoint, url):
    """Copies every object under s3://bucket/prefix into a temporary directory."""
    import tempfile

    import boto3

    bucket, _, prefix = url[len("s3://"):].partition("/")
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    local = tempfile.mkdtemp(prefix="cap-s3-lake-")
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):].lstrip("/")
            path = os.path.join(local, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            s3.download_file(bucket, obj["Key"], path)
            count += 1
    if count == 0:
        fail(f"no objects under {url}")
    return local


def main():
    args = sys.argv[1:]
    endpoint = None
    if args[:1] == ["--s3-endpoint"]:
        endpoint, args = args[1], args[2:]
    if len(args) < 3:
        fail(__doc__)
    lake, out = args[0], args[1]
    if endpoint:
        lake = mirror_s3(endpoint, lake)
    for table in args[2:]:
        check_table(lake, out, table)


if __name__ == "__main__":
    main()
