"""MovieLens ml-latest-small directory -> canonical behaviors + items tables.

Inputs (UTF-8 CSV with one header row; quoted fields may hold commas):
  ratings.csv `userId,movieId,rating,timestamp`, tags.csv `userId,movieId,tag,timestamp`
  (optional), movies.csv `movieId,title,genres` (genres `|`-separated).

Behaviors: a rating becomes `low` (<= 2.5), `mid` (3.0-3.5) or `high` (>= 4.0) - the
MovieLens label (rating >= 4) is therefore behavior == `high`; a tag application
becomes `tag`. Items (movies.csv order): `title` as published (with year), `category`
the full `|`-joined genre list (genres are listed alphabetically, so a "first genre"
would carry no meaning; `(no genres listed)` becomes empty), `description` the item
text for the encoder: genres, then the movie's distinct tags (first spelling seen,
case-insensitive) - e.g. "Adventure, Animation, Children. Tags: pixar, fun".

Decisions on flawed rows (also in report.json / report.md):
* wrong field count, bad quoting, non-numeric ids, rating not in 0.5..5.0 (step 0.5),
  timestamp not a non-negative integer or after 2100 (millisecond timestamps are named
  as such; `timestamp_unit="ms"` converts them), invalid UTF-8 in a key field: row
  dropped (bad). An unexpected error in one row makes it a bad row `row_error`.
* invalid UTF-8 inside a title or tag: replaced by U+FFFD, row kept, flagged.
* exact duplicate behavior rows: later copies dropped (bad `duplicate_row`).
* duplicate movieId in movies.csv: the first row wins, later ones are bad.
* a rated/tagged movie missing from movies.csv: kept, added to items with empty text,
  flagged `item_not_in_catalog`; an item without any text is flagged `missing_item_text`.
* an empty tag: the tag application is kept as a behavior, flagged `empty_tag`.
"""
from __future__ import annotations

import pathlib

from dmgin_tf.config import DataConfig
from dmgin_tf.data.converters.common import (ConversionResult, progress_bar, publish,
                                             resolve_file, staging)
from dmgin_tf.data.converters.reader import (check_line, check_timestamp, file_size, int_id,
                                             is_int_id, iter_csv_lines, raw_time_detail)
from dmgin_tf.data.converters.report import ConversionReport
from dmgin_tf.data.converters.tables import BEHAVIORS_FILE, ITEMS_FILE, BehaviorSink, write_items
from dmgin_tf.data.datasets import MOVIELENS_BEHAVIORS
from dmgin_tf.errors import DataError
from dmgin_tf.features import CATEGORY, DESCRIPTION, TITLE

RATINGS_FILE, TAGS_FILE, MOVIES_FILE = "ratings.csv", "tags.csv", "movies.csv"
RATINGS_HEADER = ["userId", "movieId", "rating", "timestamp"]
TAGS_HEADER = ["userId", "movieId", "tag", "timestamp"]
MOVIES_HEADER = ["movieId", "title", "genres"]
NO_GENRES = "(no genres listed)"
LOW, MID, HIGH, TAG = MOVIELENS_BEHAVIORS
_VALID_RATINGS = {i / 2 for i in range(1, 11)}  # 0.5, 1.0, ..., 5.0


def rating_behavior(rating: float) -> str:
    """Behavior type of a rating: low (<= 2.5), mid (3.0-3.5), high (>= 4.0)."""
    return LOW if rating <= 2.5 else (MID if rating <= 3.5 else HIGH)


def item_description(genres: str, tags) -> str:
    """Item text for the encoder: `'A, B. Tags: t1, t2'` from `A|B` and the movie's tags."""
    parts = [", ".join(g for g in genres.split("|") if g)] if genres else []
    if tags:
        parts.append("Tags: " + ", ".join(tags))
    return ". ".join(p for p in parts if p)


# MovieLens began collecting ratings in 1995: an earlier time is a broken value (a line
# cut short, e.g. by an interrupted download, or a zero), not an early rating.
MOVIELENS_START = (788_918_400, "1995-01-01, when MovieLens began")   # 00:00 UTC


def _data_lines(path: pathlib.Path, header, bar):
    """Data lines of a CSV whose first line must be `header` (else DataError: wrong file)."""
    lines = iter_csv_lines(path, bar)
    first = next(lines, None)
    got = [f.strip() for f in first.fields] if first is not None and first.fields else None
    if got != header:
        raise DataError(f"{path}: expected header {','.join(header)!r}, got "
                        f"{first.text if first is not None else '(empty file)'!r}")
    return lines


def convert_movielens(input_dir, output_dir, config: DataConfig | None = None, *,
                      show_progress: bool = False, max_samples: int = 5,
                      timestamp_unit: str = "s") -> ConversionResult:
    """Converts an ml-latest-small style directory into `output_dir`.

    Raises:
      DataError: a file's bad-row fraction exceeds `config.max_error_fraction`, or a
        header is not the MovieLens one.
      FileNotFoundError: ratings.csv or movies.csv is missing.
    """
    cfg = config or DataConfig()
    root = pathlib.Path(input_dir)
    if root.is_file():
        raise FileNotFoundError(f"MovieLens input: {root} is a file; pass the directory that "
                                f"holds {RATINGS_FILE} and {MOVIES_FILE}")
    # Each file as named, or gzipped beside it (`ratings.csv.gz`); tags.csv is optional.
    paths = {name: resolve_file(root, name) for name in (MOVIES_FILE, RATINGS_FILE)}
    try:
        paths[TAGS_FILE] = resolve_file(root, TAGS_FILE)
    except FileNotFoundError:
        paths[TAGS_FILE] = None
    has_tags = paths[TAGS_FILE] is not None
    report = ConversionReport("movielens", cfg.max_error_fraction, max_samples)
    movies_fr = report.file(paths[MOVIES_FILE], "items")
    ratings_fr = report.file(paths[RATINGS_FILE], "behaviors")
    tags_fr = report.file(paths[TAGS_FILE], "behaviors", optional=True) if has_tags else None
    total = sum(file_size(p) for p in paths.values() if p is not None)
    bar = progress_bar(total, "movielens", show_progress)

    # --- movies.csv -> catalog (movieId -> title, genres, line) ---------------------------
    movies: dict = {}
    for line in _data_lines(paths[MOVIES_FILE], MOVIES_HEADER, bar):
        f = check_line(line, 3, report, movies_fr, key_fields=(0,))
        if f is None:
            continue
        movie, title, genres = f[0].strip(), f[1].strip(), f[2].strip()
        if not is_int_id(movie):
            report.bad(movies_fr, line.number, "bad_id", f"movieId {movie!r} is not a numeric id", line.text)
        elif (movie := int_id(movie)) in movies:
            report.bad(movies_fr, line.number, "duplicate_item",
                       f"movieId {movie} already defined on line {movies[movie][2]}", line.text)
        else:
            if not title:
                report.flag(movies_fr, line.number, "missing_title", f"movie {movie} has no title", line.text)
            movies[movie] = (title, "" if genres == NO_GENRES else genres, line.number)

    with staging(output_dir) as tmp:
        sink = BehaviorSink(tmp, [ratings_fr] + ([tags_fr] if has_tags else []))
        extra_items: dict = {}  # movies referenced by behaviors but absent from movies.csv

        def note_item(movie, fr, number, text):
            if movie not in movies:   # flagged per row, added to the items once
                extra_items[movie] = True
                report.flag(fr, number, "item_not_in_catalog",
                            f"movieId {movie} not in {MOVIES_FILE}; added with empty text", text)

        # --- ratings.csv -> low / mid / high --------------------------------------------
        for line in _data_lines(paths[RATINGS_FILE], RATINGS_HEADER, bar):
            f = check_line(line, 4, report, ratings_fr, key_fields=(0, 1, 2, 3))
            if f is None:
                continue
            try:
                user, movie, rating_text, ts_text = (v.strip() for v in f)
                user, movie, bad = _checked_ids(user, movie)
                if bad is None:
                    try:
                        rating = float(rating_text)
                    except ValueError:
                        rating = None
                    if rating not in _VALID_RATINGS:
                        bad = ("bad_rating", f"rating {rating_text!r} is not one of 0.5, 1.0, ..., "
                                             "5.0 (no behavior type)")
                if bad is None:
                    ts, bad = check_timestamp(ts_text, timestamp_unit, not_before=MOVIELENS_START)
                if bad is not None:
                    report.bad(ratings_fr, line.number, bad[0], bad[1], line.text)
                    continue
                note_item(movie, ratings_fr, line.number, line.text)
                sink.add(user, movie, rating_behavior(rating), ts, 0, line.number,
                         raw_time_detail(rating_text, ts_text, timestamp_unit))
            except Exception as e:  # one row never stops the conversion
                report.bad(ratings_fr, line.number, "row_error", f"{type(e).__name__}: {e}",
                           line.text)

        # --- tags.csv -> tag behaviors + item text ----------------------------------------
        tags_by_movie: dict = {}  # movie -> {tag.lower(): first spelling}
        if has_tags:
            for line in _data_lines(paths[TAGS_FILE], TAGS_HEADER, bar):
                f = check_line(line, 4, report, tags_fr, key_fields=(0, 1, 3))
                if f is None:
                    continue
                try:
                    user, movie, tag, ts_text = (f[0].strip(), f[1].strip(), f[2].strip(),
                                                 f[3].strip())
                    user, movie, bad = _checked_ids(user, movie)
                    if bad is None:
                        ts, bad = check_timestamp(ts_text, timestamp_unit, not_before=MOVIELENS_START)
                    if bad is not None:
                        report.bad(tags_fr, line.number, bad[0], bad[1], line.text)
                        continue
                    note_item(movie, tags_fr, line.number, line.text)
                    if tag:
                        tags_by_movie.setdefault(movie, {}).setdefault(tag.lower(), tag)
                    else:
                        report.flag(tags_fr, line.number, "empty_tag",
                                    "tag text is empty; behavior kept", line.text)
                    sink.add(user, movie, TAG, ts, 1, line.number,
                             raw_time_detail(tag, ts_text, timestamp_unit))
                except Exception as e:  # one row never stops the conversion
                    report.bad(tags_fr, line.number, "row_error", f"{type(e).__name__}: {e}",
                               line.text)
        bar.close()

        n_behaviors = sink.finish(tmp / BEHAVIORS_FILE, report)
        items: dict = {}
        for movie, (title, genres, _) in movies.items():
            items[movie] = {TITLE: title, CATEGORY: genres,
                            DESCRIPTION: item_description(genres, list(tags_by_movie.get(movie, {}).values()))}
        for movie in extra_items:
            items[movie] = {DESCRIPTION: item_description("", list(tags_by_movie.get(movie, {}).values()))}
        n_text = 0
        for movie, item in items.items():
            if item.get(TITLE) or item.get(DESCRIPTION):
                n_text += 1
            else:
                report.flag(movies_fr, None, "missing_item_text", f"movie {movie} has no title, genres or tags")
        n_items = write_items(tmp / ITEMS_FILE, items)
        report.decide("behaviors", "rating <= 2.5 -> low, 3.0-3.5 -> mid, >= 4.0 -> high; tag "
                      "application -> tag")
        if has_tags and tags_fr.rows_read == 0:
            report.decide("tags", f"{paths[TAGS_FILE].name} holds no rows: no tag behaviors")
        report.decide("category", "the full |-joined genre list; '(no genres listed)' -> empty")
        report.decide("description", "genres joined by ', ' then 'Tags: ' and the movie's "
                      "distinct tags (case-insensitive, first spelling)")
        report.decide("duplicate_row", "exact duplicate rows (same user, movie, rating value or "
                      "tag text, timestamp) are dropped, keeping the first")
        report.decide("item_not_in_catalog", "behaviors on movies missing from movies.csv are "
                      "kept; the movie is added to items with empty title")
        report.info.update({"behaviors": n_behaviors, "items": n_items, "items_with_text": n_text,
                            "behavior_types": list(MOVIELENS_BEHAVIORS),
                            "tags_file": str(paths[TAGS_FILE]) if has_tags else "(none)"})
        return publish(tmp, output_dir, report)


def _checked_ids(user: str, movie: str):
    """(user, movie, None) with the ids as numbers (`int_id`), or (user, movie, (reason,
    detail)) when one is not a numeric id."""
    if not is_int_id(user):
        return user, movie, ("bad_id", f"userId {user!r} is not a numeric id")
    if not is_int_id(movie):
        return user, movie, ("bad_id", f"movieId {movie!r} is not a numeric id")
    return int_id(user), int_id(movie), None
