"""`dmgin data fetch`: public datasets from their publisher, checksum-verified.

    >>> from dmgin_tf.data.fetch import fetch
    >>> fetch("ml-latest-small", "data/movielens-latest-small")      # doctest: +SKIP
    FetchResult(name='ml-latest-small', directory=PosixPath('data/movielens-latest-small'), ...)

MovieLens archives come from GroupLens (https://files.grouplens.org/datasets/movielens/).
Each download is checked against the archive's size and SHA-256 (the values TensorFlow
Datasets records for the same URLs; pass `sha256=` / `--sha256` when GroupLens republishes
a file) and against the CRC of every member before anything is unpacked. The archive's
files land in the target directory as published. MovieLens 100K and 1M use older layouts
(`u.data`/`u.item`, `ratings.dat`/`movies.dat`); for them the ratings and movies are also
written as `ratings.csv` / `movies.csv` in the ml-latest-small layout, so every variant
reads with `--dataset movielens`. `convert=True` then runs the MovieLens converter into
`<directory>/canonical` (behaviors.parquet, items.parquet, report).

Taobao UserBehavior is not fetched: its terms (Alibaba Tianchi) require each user to
accept them and download it by hand (docs/data.md).

Base URL: `base_url=`, `--base-url` or the `DMGIN_DATA_BASE_URL` environment variable
(a mirror, or a local server in tests).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from typing import Callable, Optional

from dmgin_tf.errors import DataError

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/"
BASE_URL_ENV = "DMGIN_DATA_BASE_URL"
TAOBAO_URL = "https://tianchi.aliyun.com/dataset/649"
CANONICAL_DIR = "canonical"
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Archive:
    """One published archive `<name>.zip` (top folder `<name>/`): size, SHA-256, layout."""
    name: str
    size: int
    sha256: str
    layout: str          # "csv" (ml-latest-small style), "100k" or "1m"
    description: str

    @property
    def file(self) -> str:
        return self.name + ".zip"

    @property
    def folder(self) -> str:
        return self.name


# name, size in bytes, SHA-256, layout, description. Sizes and SHA-256 as recorded for
# these GroupLens URLs by TensorFlow Datasets (tensorflow_datasets/url_checksums/movielens.txt).
_PUBLISHED = """
ml-latest-small 978202 696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436 csv
  100k ratings + tags, 610 users, 9.7k movies (1 MB)
ml-100k 4924029 50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229 100k
  100k ratings, 943 users, 1.7k movies, 1998 (5 MB)
ml-1m 5917549 a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20 1m
  1M ratings, 6k users, 3.9k movies, 2003 (6 MB)
ml-20m 198702078 96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3 csv
  20M ratings + tags, 138k users (190 MB)
ml-25m 261978986 8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa csv
  25M ratings + tags, 162k users (250 MB)
"""


def _parse_published(text: str) -> dict:
    lines = text.strip().splitlines()
    out = {}
    for head, desc in zip(lines[::2], lines[1::2]):
        name, size, sha, layout = head.split()
        out[name] = Archive(name, int(size), sha, layout, desc.strip())
    return out


ARCHIVES = _parse_published(_PUBLISHED)
MANUAL = {"taobao": (
    f"Taobao UserBehavior must be downloaded by hand: its terms require you to accept them at "
    f"{TAOBAO_URL} (Alibaba Tianchi). Unpack UserBehavior.csv into a directory and pass it as "
    f"--data/--input with --dataset taobao (docs/data.md)")}


@dataclasses.dataclass(frozen=True)
class FetchResult:
    """What `fetch` wrote: the dataset directory, its verified checksum, the canonical tables."""
    name: str
    directory: pathlib.Path
    sha256: str
    size: int
    files: tuple
    canonical: Optional[pathlib.Path] = None


def available() -> list[str]:
    """Names `fetch` accepts, in display order."""
    return list(ARCHIVES)


def archive_url(name: str, base_url: Optional[str] = None) -> str:
    """Download URL of `name`: base URL (argument, $DMGIN_DATA_BASE_URL, GroupLens) + file."""
    base = base_url or os.environ.get(BASE_URL_ENV) or GROUPLENS_URL
    return base.rstrip("/") + "/" + _archive(name).file


def fetch(name: str, to, *, base_url: Optional[str] = None, sha256: Optional[str] = None,
          archive: Optional[str] = None, convert: bool = False, timeout: float = 60.0,
          force: bool = False, progress: Optional[Callable[[int, int], None]] = None) -> FetchResult:
    """Downloads (or takes `archive`, a local copy), verifies and unpacks `name` into `to`.

    Args:
      name: an `ARCHIVES` key (e.g. "ml-latest-small").
      to: the dataset directory to create (e.g. "data/movielens-latest-small").
      sha256: expected SHA-256 instead of the recorded one (the size check is then skipped).
      archive: path of an already downloaded zip (air-gapped hosts); no network used.
      convert: also write canonical tables into `<to>/canonical`.
      force: replace a non-empty `to`.
      progress: called as progress(bytes_done, bytes_total) while downloading.
    Raises:
      DataError: unknown name, unreachable server, checksum/size/CRC mismatch, unsafe
        archive member, or a non-empty target without `force`.
    """
    spec = _archive(name)
    target = pathlib.Path(to)
    if target.exists() and any(target.iterdir()) and not force:
        raise DataError(f"--to {target}: directory exists and is not empty (use --force to replace it)")
    expected = (sha256 or spec.sha256).lower()
    with tempfile.TemporaryDirectory(prefix="dmgin-fetch-") as tmp:
        zip_path = pathlib.Path(archive) if archive else pathlib.Path(tmp) / spec.file
        if archive:
            if not zip_path.is_file():
                raise DataError(f"--archive {zip_path}: file not found")
        else:
            _download(archive_url(name, base_url), zip_path, timeout, progress)
        digest, size = _sha256(zip_path)
        if sha256 is None and size != spec.size:
            raise DataError(f"{spec.file}: size {size} bytes, expected {spec.size} "
                            f"(a changed or truncated file; pass --sha256 if GroupLens republished it)")
        if digest != expected:
            raise DataError(f"{spec.file}: sha256 {digest}, expected {expected}")
        staging = pathlib.Path(tmp) / "unpacked"
        files = _unpack(zip_path, spec, staging)
        if spec.layout != "csv":
            files += _write_csv_layout(spec, staging)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(target))
    canonical = None
    if convert:
        from dmgin_tf.data.converters import convert as convert_dataset
        canonical = convert_dataset("movielens", target, target / CANONICAL_DIR,
                                    show_progress=False).output_dir
    return FetchResult(name, target, digest, size, tuple(sorted(files)),
                       pathlib.Path(canonical) if canonical else None)


def _archive(name: str) -> Archive:
    if name in MANUAL:
        raise DataError(MANUAL[name])
    if name not in ARCHIVES:
        raise DataError(f"unknown dataset {name!r}; fetchable: {', '.join(ARCHIVES)} "
                        f"(taobao: manual download, docs/data.md)")
    return ARCHIVES[name]


def _download(url: str, dest: pathlib.Path, timeout: float, progress) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    except urllib.error.HTTPError as e:
        raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"cannot download {url}: {reason} (offline? download it on a connected "
                        f"machine and pass the file with --archive)") from None


def _sha256(path: pathlib.Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _unpack(zip_path: pathlib.Path, spec: Archive, dest: pathlib.Path) -> list[str]:
    """Members under `spec.folder/` into `dest` (folder prefix dropped); CRCs checked first."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise DataError(f"{spec.file}: not a zip archive ({e})") from None
    with zf:
        bad = zf.testzip()
        if bad is not None:
            raise DataError(f"{spec.file}: member {bad!r} fails its CRC check")
        prefix = spec.folder + "/"
        files = []
        dest.mkdir(parents=True)
        for info in zf.infolist():
            rel = info.filename[len(prefix):] if info.filename.startswith(prefix) else None
            if rel is None or rel == "" or info.is_dir():
                continue
            parts = pathlib.PurePosixPath(rel).parts
            if rel.startswith("/") or ".." in parts:
                raise DataError(f"{spec.file}: unsafe member path {info.filename!r}")
            out = dest.joinpath(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            files.append(rel)
    if not files:
        raise DataError(f"{spec.file}: no files under {prefix!r}")
    return files


def _write_csv_layout(spec: Archive, d: pathlib.Path) -> list[str]:
    """ml-100k / ml-1m -> ratings.csv + movies.csv (ml-latest-small columns, UTF-8)."""
    if spec.layout == "100k":
        genres = [line.split("|")[0] for line in _read_text(d / "u.genre", spec).splitlines() if line]
        ratings = (line.split("\t") for line in _read_text(d / "u.data", spec).splitlines() if line)
        movies = []
        for line in _read_text(d / "u.item", spec).splitlines():
            if not line:
                continue
            f = line.split("|")
            flags = f[5:5 + len(genres)]
            names = [g for g, on in zip(genres, flags) if on == "1" and g != "unknown"]
            movies.append((f[0], f[1], "|".join(names) or "(no genres listed)"))
    elif spec.layout == "1m":
        ratings = (line.split("::") for line in _read_text(d / "ratings.dat", spec).splitlines() if line)
        movies = [tuple(line.split("::")) for line in _read_text(d / "movies.dat", spec).splitlines() if line]
    else:
        raise ValueError(spec.layout)
    for name, header, rows in (("ratings.csv", ["userId", "movieId", "rating", "timestamp"], ratings),
                               ("movies.csv", ["movieId", "title", "genres"], movies)):
        with open(d / name, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            for row in rows:
                w.writerow([c.strip() for c in row][:len(header)])
    return ["ratings.csv", "movies.csv"]


def _read_text(path: pathlib.Path, spec: Archive) -> str:
    """The 100K/1M files are Latin-1 text."""
    if not path.is_file():
        raise DataError(f"{spec.file}: expected member {spec.folder}/{path.name} is missing")
    return io.open(path, encoding="latin-1").read()
