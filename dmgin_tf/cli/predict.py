"""`dmgin predict`: score serialized tf.Examples (TFRecord) through TF Serving / dmgin serve.

    dmgin predict --target localhost:8500 --model dmgin --examples data.tfrecord [--output ctr.csv]
    dmgin predict ... --output ctr.csv --on-invalid skip [--rejects rejected.csv]

The file is read and scored `--batch-size` examples at a time (any size of file). The
output CSV has one `index,ctr` line per scored example (index = the record's position in
the file, from 0); it is written to a temporary file and moved into place only when
every record was read, so a failed run leaves no partial output.

Examples the server refuses as invalid (INVALID_ARGUMENT: not a tf.Example, a history
event after its request time, ...): `--on-invalid fail` (default) stops at the first
and names its record; `--on-invalid skip` scores the others and writes `index,error` of
each refused one to `--rejects` (default `OUTPUT.rejects.csv`, or stderr when the
predictions go to stdout).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time

from dmgin_tf.cli.common import positive

PROGRESS_EVERY_S = 10.0


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="gRPC Predict on tf.Examples (serving_default)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="localhost:8500", help="host:port of the gRPC server")
    p.add_argument("--model", default="dmgin", help="model name (default dmgin)")
    p.add_argument("--version", type=positive(int), help="model version (default latest)")
    p.add_argument("--examples", required=True, metavar="TFRECORD",
                   help="TFRecord file of serialized serving tf.Examples")
    p.add_argument("--batch-size", type=positive(int), default=128, help="examples per request (>= 1)")
    p.add_argument("--timeout", type=positive(float), default=10.0,
                   help="deadline per request, seconds (> 0)")
    p.add_argument("--output", metavar="CSV", help="write ctr per example (default: stdout)")
    p.add_argument("--on-invalid", choices=("fail", "skip"), default="fail",
                   help="examples the server refuses as invalid: fail (default) stops at the "
                        "first; skip scores the rest and lists the refused ones in --rejects")
    p.add_argument("--rejects", metavar="CSV",
                   help="with --on-invalid skip: index,error of each refused example "
                        "(default OUTPUT.rejects.csv; stderr without --output)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dmgin_tf.errors import DmginError
    from dmgin_tf.serving import Client
    if not os.path.isfile(args.examples):
        raise DmginError(f"--examples {args.examples}: "
                         f"{'is a directory' if os.path.isdir(args.examples) else 'no such file'}"
                         f" (a TFRecord file of serialized tf.train.Examples)")
    if args.rejects and args.on_invalid != "skip":
        raise DmginError("--rejects lists the examples --on-invalid skip leaves out; "
                         "add --on-invalid skip")
    rejects_path = args.rejects or (f"{args.output}.rejects.csv" if args.output else None)
    out = _AtomicCsv(args.output, ["index", "ctr"], sys.stdout)
    rejects = (_AtomicCsv(rejects_path, ["index", "error"], sys.stderr)
               if args.on_invalid == "skip" else None)
    scored = refused = 0
    last_report = time.monotonic()
    try:
        with Client(args.target, args.model, version=args.version, timeout_s=args.timeout) as client:
            for start, chunk in _record_batches(args.examples, args.batch_size):
                for index, ctr, error in _score(client, args.target, start, chunk):
                    if error is None:
                        out.row(index, f"{ctr:.6f}")
                        scored += 1
                    elif rejects is None:
                        raise DmginError(f"--examples {args.examples}: record {index}: {error} "
                                         "(--on-invalid skip scores the other records)")
                    else:
                        rejects.row(index, error)
                        refused += 1
                if args.output and time.monotonic() - last_report > PROGRESS_EVERY_S:
                    print(f"scored {scored:,} examples" + (f", {refused:,} refused" if refused
                                                            else ""), file=sys.stderr)
                    last_report = time.monotonic()
        if scored + refused == 0:
            raise DmginError(f"--examples {args.examples}: no records" + (
                " (empty file)" if os.path.getsize(args.examples) == 0 else
                " (too short for a TFRecord: a TFRecord file of serialized tf.train.Examples)"))
        if scored == 0:
            rejects.commit()        # the reasons are what the user needs now
            raise DmginError(f"--examples {args.examples}: the server refused all {refused:,} "
                             f"examples" + (f"; reasons in {rejects_path}" if rejects_path else ""))
    except BaseException:
        out.discard()
        if rejects is not None:
            rejects.discard()
        raise
    out.commit()
    if rejects is not None:
        rejects.commit()
    if args.output:
        print(f"wrote {scored:,} predictions to {args.output}")
    if refused:
        where = f": index and reason in {rejects_path}" if rejects_path else " (listed above)"
        print(f"{refused:,} examples refused as invalid and not scored{where}", file=sys.stderr)
    return 0


def _record_batches(path: str, batch_size: int):
    """(index of the first record, [serialized records]) per `batch_size` records of the
    TFRecord file, read as they are scored. An unreadable file raises DmginError saying
    how many records were read before it."""
    import tensorflow as tf

    from dmgin_tf.errors import DmginError
    chunk, start = [], 0
    it = iter(tf.data.TFRecordDataset(path))
    while True:
        try:
            record = next(it)
        except StopIteration:
            break
        except tf.errors.OpError as e:
            # The op's message carries TF's function and device names; keep its last part.
            detail = e.message.split("}}")[-1].split("[Op:")[0].strip(" ;:'")
            raise DmginError(f"--examples {path}: cannot read TFRecords: {detail} (after "
                             f"{start + len(chunk)} records; a TFRecord file of serialized "
                             "tf.train.Examples)") from None
        chunk.append(record.numpy())
        if len(chunk) == batch_size:
            yield start, chunk
            start, chunk = start + len(chunk), []
    if chunk:
        yield start, chunk


def _score(client, target, start, chunk):
    """Yields (index, ctr, None) per example of `chunk`, or (index, None, error) for one
    the server refuses as invalid: a refused batch is scored again one example at a time,
    so one bad record costs its batch a request per example, not the whole file — and
    lazily, so a run that stops at the first refused record sends no request after it."""
    import grpc

    from dmgin_tf.errors import DmginError
    try:
        ctr = client.predict_examples(chunk, batch_size=len(chunk))
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in \
                (e.details() or ""):
            raise DmginError(
                f"{target}: records {start}..{start + len(chunk) - 1} make a request larger "
                f"than gRPC's message limit ({e.details()}); long histories need smaller "
                f"batches: --batch-size {max(1, len(chunk) // 4)}") from None
        if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise DmginError(f"{target}: {e.code().name}: {e.details()}") from None
        if len(chunk) == 1:
            yield start, None, _one_example(e.details())
            return
    else:
        yield from ((start + i, float(v), None) for i, v in enumerate(ctr))
        return
    for i, record in enumerate(chunk):
        yield from _score(client, target, start + i, [record])


def _one_example(details: str) -> str:
    """The server's message about a one-example request, without its position in that
    request ("example 0"), which is not the record's place in the file."""
    return details.replace("example 0 ", "the example ").replace("example 0:", "the example:")


class _AtomicCsv:
    """A CSV written to `path + '.partial'` and renamed onto `path` by `commit()`, so no
    partial file is ever left under `path`; with `path=None` it goes to `stream` as it
    is written."""

    def __init__(self, path, header, stream):
        self.path = path
        if path:
            self._tmp = f"{path}.partial"
            self._file = open(self._tmp, "w", newline="")
        else:
            self._tmp, self._file = None, stream
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._writer.writerow(header)

    def row(self, *values) -> None:
        self._writer.writerow(values)

    def commit(self) -> None:
        if self._tmp:
            self._file.close()
            os.replace(self._tmp, self.path)
        else:
            self._file.flush()

    def discard(self) -> None:
        if self._tmp:
            self._file.close()
            if os.path.exists(self._tmp):
                os.remove(self._tmp)
