"""`dmgin data fetch` against a local HTTP server serving archives built here (no network)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile

import pandas as pd
import pytest

from dmgin_tf.cli.main import main as cli_main
from dmgin_tf.data import fetch as fetch_mod
from dmgin_tf.data.fetch import fetch
from dmgin_tf.errors import DataError

RATINGS = "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,2.5,964982800\n2,10,5.0,964983000\n"
MOVIES = 'movieId,title,genres\n10,"Heat, The (1995)",Action|Crime\n20,Toy Story (1995),Animation\n'
TAGS = "userId,movieId,tag,timestamp\n2,10,heist,964983100\n"


def _zip(path, folder, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in members.items():
            z.writestr(f"{folder}/{name}", text.encode("latin-1") if folder != "ml-latest-small" else text)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1; yields (www dir, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}/datasets/"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def translate_path(self, path):  # serve /datasets/X from www/X
        return super().translate_path(path.replace("/datasets/", "/", 1))

    def log_message(self, *args):
        pass


def test_fetch_latest_small_verifies_unpacks_and_converts(server, tmp_path):
    www, base = server
    sha = _zip(www / "ml-latest-small.zip", "ml-latest-small",
               {"ratings.csv": RATINGS, "movies.csv": MOVIES, "tags.csv": TAGS, "README.txt": "license"})
    out = tmp_path / "data" / "movielens-latest-small"
    result = fetch("ml-latest-small", out, base_url=base, sha256=sha, convert=True)
    assert result.sha256 == sha
    assert (out / "ratings.csv").read_text() == RATINGS
    assert set(result.files) == {"README.txt", "movies.csv", "ratings.csv", "tags.csv"}
    behaviors = pd.read_parquet(result.canonical / "behaviors.parquet")
    assert len(behaviors) == 4                       # 3 ratings + 1 tag application
    items = pd.read_parquet(result.canonical / "items.parquet")
    assert "Heat, The (1995)" in set(items["title"])


def test_checksum_mismatch_is_an_error_and_writes_nothing(server, tmp_path):
    www, base = server
    _zip(www / "ml-latest-small.zip", "ml-latest-small", {"ratings.csv": RATINGS, "movies.csv": MOVIES})
    out = tmp_path / "ml"
    with pytest.raises(DataError, match="sha256 .* expected 0{64}"):
        fetch("ml-latest-small", out, base_url=base, sha256="0" * 64)
    assert not out.exists()
    # Without --sha256 the recorded size is checked first (our test archive is not GroupLens').
    with pytest.raises(DataError, match="size .* expected 978202"):
        fetch("ml-latest-small", out, base_url=base)


def test_corrupt_member_fails_its_crc(tmp_path):
    z = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("ml-latest-small/ratings.csv", RATINGS)
    data = bytearray(z.read_bytes())
    i = data.index(b"964982703")
    data[i] = ord("8")                                # flip one byte of the stored member
    z.write_bytes(bytes(data))
    sha = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(DataError, match="CRC"):
        fetch("ml-latest-small", tmp_path / "out", archive=str(z), sha256=sha)


def test_ml_100k_and_1m_get_the_csv_layout(server, tmp_path):
    www, base = server
    sha100 = _zip(www / "ml-100k.zip", "ml-100k", {
        "u.data": "1\t10\t4\t881250949\n2\t20\t2\t881250950\n",
        "u.item": "10|Caf\xe9 (1995)|01-Jan-1995||http://x|0|1|0|0|0|1" + "|0" * 13 + "\n"
                  "20|Toy Story (1995)|01-Jan-1995||http://x|1" + "|0" * 18 + "\n",
        "u.genre": "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\n"
                   "Crime|6\nDocumentary|7\nDrama|8\nFantasy|9\nFilm-Noir|10\nHorror|11\n"
                   "Musical|12\nMystery|13\nRomance|14\nSci-Fi|15\nThriller|16\nWar|17\nWestern|18\n\n"})
    r = fetch("ml-100k", tmp_path / "ml100k", base_url=base, sha256=sha100, convert=True)
    movies = pd.read_csv(r.directory / "movies.csv")
    assert list(movies["title"]) == ["Café (1995)", "Toy Story (1995)"]
    assert list(movies["genres"]) == ["Action|Comedy", "(no genres listed)"]
    assert len(pd.read_parquet(r.canonical / "behaviors.parquet")) == 2

    sha1m = _zip(www / "ml-1m.zip", "ml-1m", {
        "ratings.dat": "1::10::5::978300760\n1::20::3::978302109\n3::10::1::978301968\n",
        "movies.dat": "10::GoldenEye (1995)::Action|Adventure|Thriller\n20::Toy Story (1995)::Animation\n"})
    r = fetch("ml-1m", tmp_path / "ml1m", base_url=base, sha256=sha1m)
    ratings = pd.read_csv(r.directory / "ratings.csv")
    assert list(ratings.columns) == ["userId", "movieId", "rating", "timestamp"]
    assert ratings["rating"].tolist() == [5, 3, 1]


def test_cli_offline_is_one_line_error(tmp_path, capsys, monkeypatch):
    # A port nobody listens on: connection refused, as on a host without network.
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv(fetch_mod.BASE_URL_ENV, f"http://127.0.0.1:{port}/")
    rc = cli_main(["data", "fetch", "ml-1m", "--to", str(tmp_path / "ml1m"), "--timeout", "5"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("dmgin data: error: cannot download http://127.0.0.1:")
    assert "--archive" in err


def test_taobao_and_unknown_names_explain(tmp_path):
    with pytest.raises(DataError, match="tianchi.aliyun.com"):
        fetch("taobao", tmp_path / "tb")
    with pytest.raises(DataError, match="unknown dataset 'ml-7m'.*ml-latest-small"):
        fetch("ml-7m", tmp_path / "x")


def test_non_empty_target_needs_force(server, tmp_path):
    www, base = server
    sha = _zip(www / "ml-latest-small.zip", "ml-latest-small", {"ratings.csv": RATINGS, "movies.csv": MOVIES})
    out = tmp_path / "ml"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        fetch("ml-latest-small", out, base_url=base, sha256=sha)
    fetch("ml-latest-small", out, base_url=base, sha256=sha, force=True)
    assert not (out / "keep.txt").exists() and (out / "ratings.csv").exists()


def test_recorded_checksums_are_well_formed():
    for a in fetch_mod.ARCHIVES.values():
        assert len(a.sha256) == 64 and int(a.sha256, 16) >= 0 and a.size > 0
        assert fetch_mod.archive_url(a.name, None).startswith("https://files.grouplens.org/datasets/movielens/")
