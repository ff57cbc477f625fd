"""Derived stage ``grammar``: the corpus-wide pitch-agnostic Re-Pair grammar.

``update(con, piece_ids)`` (called by ingest/derived.py inside a transaction):

1. loads the notes of the new pieces in grammar order (track, onset, pitch, note_index);
2. loads the existing rules and *replays* them on the new sequences, round by round,
   with the build's own greedy pass (ingest/grammar_core.py ``replay``): every rule the
   corpus already has is found in the new pieces wherever the parse would take it;
3. learns new rules from what is left (pairs seen at least ``min_count`` times in the new
   material, never a pair that is already a rule), up to ``max_rules`` in all;
4. writes the new rules, the pieces' top-level parses (``grammar_sequences``) and every
   occurrence (``occurrences``, nested ones included), adds them to ``count``,
   ``n_pieces`` and ``n_top`` of their rules and the pieces' intervals to
   ``grammar_interval_counts``; then the transforms of the new rules (see
   ingest/grammar_transforms.py). Counts and choices are kept by adding the new
   pieces' share, not by rescanning ``occurrences`` or ``notes``; the rules are read as
   four integer columns (``max_rules`` bounds their number).

What stays exact after incremental updates: every stored occurrence is a true occurrence
of its rule (the notes decode exactly); each piece's parse decodes to its notes exactly;
the counts of a rule equal its rows in ``occurrences``. What does not: pieces stored
earlier are not re-parsed, so a rule learned from later pieces is missing from earlier
pieces' occurrences; a new rule needs ``min_count`` occurrences inside one update; and the
set of rules depends on the order pieces arrived in.
``atlas reindex --grammar`` (``rebuild``) deletes the grammar and builds it from scratch
over all pieces in ``piece_id`` order: deterministic, the same corpus gives the same rules.
One ingest of up to ``BATCH_PIECES`` new pieces into an empty grammar is the same build.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from atlas_db.schema_grammar import STORED_META_SOURCE
from atlas_db.settings import setting
from ingest import grammar_core as gc
from ingest import grammar_transforms as gt
from ingest.packed_keys import packed_keys

__all__ = ["STAGE", "VERSION", "version_string", "BATCH_PIECES", "MAX_RULES", "MIN_COUNT", "update", "forget",
           "rebuild", "load_notes", "notes_from_tables", "notes_dict", "load_grammar", "track_parse"]

STAGE = "grammar"
MAX_RULES = setting("ATLAS_GRAMMAR_MAX_RULES")
MIN_COUNT = setting("ATLAS_GRAMMAR_MIN_COUNT")


def version_string(max_rules: int, min_count: int) -> str:
    return f"grammar-1 max_rules={max_rules} min_count={min_count} ratio={gc.ROUND_RATIO}"


VERSION = version_string(MAX_RULES, MIN_COUNT)
# One transaction takes this many pieces: a first ingest of up to this many pieces is a
# from-scratch build; larger corpora are built in increments of this size.
BATCH_PIECES = 5000


def load_notes(con, piece_ids: list[str] | None, notes: str = "notes") -> dict:
    """Notes of the given pieces (all if None) in grammar order, as NumPy arrays, plus
    ``track_starts`` (offsets of each track's first note, then n), ``track_piece``,
    ``track_index`` per track, and ``ticks_per_beat`` per note (480 for transcribed
    audio, whose notes lie on a 480-ticks-per-beat grid). ``notes``: the relation that
    holds them (see ingest/derived.py). Notes of a piece without a ``pieces`` row are
    left out."""
    if piece_ids is not None:
        con.register("_gram_ids", pa.table({"piece_id": pa.array(piece_ids, pa.string())}))
    where = "WHERE piece_id IN (SELECT piece_id FROM _gram_ids)" if piece_ids is not None else ""
    pieces = con.execute(f"SELECT piece_id, coalesce(ticks_per_beat, 480) AS tpb FROM pieces {where} "
                         "ORDER BY piece_id").fetchnumpy()
    if piece_ids is not None:
        con.unregister("_gram_ids")
    # The notes come unsorted, each with its piece's rank in DuckDB's piece_id order, and
    # are put in grammar order here: DuckDB's ORDER BY on the id string and four more
    # keys cost ~1 s CPU for pop909-dev's 1.7M notes, one argsort of an int64 key ~0.1 s.
    con.register("_gram_pieces", pa.table({"piece_id": pa.array(pieces["piece_id"], pa.string()),
                                           "piece_k": np.arange(len(pieces["piece_id"]), dtype=np.int32)}))
    t = con.sql(
        f"""SELECT p.piece_k, n.track_index, n.note_index, n.onset_ticks, n.duration_ticks,
                   n.onset_beats, n.onset_s, n.pitch, n.velocity, n.channel
            FROM {notes} n JOIN _gram_pieces p USING (piece_id)"""
    ).to_arrow_table()
    con.unregister("_gram_pieces")
    cols = {name: t.column(name).to_numpy() for name in t.column_names}
    piece_k = cols.pop("piece_k")
    cols["ticks_per_beat"] = pieces["tpb"].astype(np.int32)[piece_k]
    o = _grammar_order(piece_k, cols["track_index"], cols["onset_ticks"], cols["pitch"], cols["note_index"])
    if o is not None:
        piece_k = piece_k[o]
        cols = {name: v[o] for name, v in cols.items()}
    return _notes_arrays(cols, piece_k, list(pieces["piece_id"]))


def _grammar_order(*keys: np.ndarray) -> np.ndarray | None:
    """Permutation sorting the rows by these integer keys (most significant first), or
    None if they are sorted already (``ingest.packed_keys``: one argsort of the keys
    packed into an int64 when they fit, else a lexsort). In grammar order no two notes
    have equal keys (note_index is unique in a track), so either sort gives the one
    order ``ORDER BY`` gives."""
    if len(keys[0]) < 2:
        return None
    packed = packed_keys(*keys)
    if packed is None:
        return np.lexsort(keys[::-1])
    if bool(np.all(packed[1:] > packed[:-1])):
        return None
    return np.argsort(packed, kind="stable")


def notes_from_tables(parsed: list[dict]) -> dict:
    """The same arrays as :func:`load_notes` from ``parse_midi`` results (no database):
    pieces are taken in ``piece_id`` order."""
    parts = []
    for tables in parsed:
        notes = tables["notes"]
        tpb = int(tables["pieces"]["ticks_per_beat"])
        parts.append(notes.append_column("ticks_per_beat", pa.array(np.full(notes.num_rows, tpb, np.int32))))
    t = pa.concat_tables(parts).sort_by([("piece_id", "ascending"), ("track_index", "ascending"),
                                         ("onset_ticks", "ascending"), ("pitch", "ascending"),
                                         ("note_index", "ascending")])
    return notes_dict(t)


def notes_dict(t: pa.Table) -> dict:
    """NumPy arrays of a notes table already in grammar order (see :func:`load_notes`)."""
    cols = {name: t.column(name).to_numpy() for name in t.column_names if name != "piece_id"}
    pid = t.column("piece_id").combine_chunks().dictionary_encode()
    # pieces come one after another: codes in order of first appearance are their ranks
    return _notes_arrays(cols, pid.indices.to_numpy(zero_copy_only=False), pid.dictionary.to_pylist())


def _notes_arrays(cols: dict, piece_k: np.ndarray, piece_ids: list[str]) -> dict:
    """The dict of :func:`load_notes` from its columns in grammar order, each note's piece
    as an index into ``piece_ids`` (the same index for all notes of a piece)."""
    out = dict(cols)
    n = len(piece_k)
    tr = out["track_index"]
    new = np.ones(n, np.bool_)
    if n:
        new[1:] = (piece_k[1:] != piece_k[:-1]) | (tr[1:] != tr[:-1])
    first = np.flatnonzero(new)
    out["track_starts"] = np.concatenate([first, [n]]).astype(np.int64)
    out["track_piece"] = [piece_ids[k] for k in piece_k[first].tolist()]
    out["track_track"] = tr[first].astype(np.int32)
    out["n"] = n
    return out


def load_grammar(con) -> gc.Grammar:
    rows = con.execute(
        "SELECT left_child, right_child, connector_interval, learn_round FROM rules "
        "WHERE rule_id >= ? ORDER BY rule_id", [gc.N_TERMINALS]
    ).fetchnumpy()
    g = gc.Grammar()
    if len(rows["left_child"]):
        g.extend(rows["left_child"], rows["right_child"], rows["connector_interval"], rows["learn_round"])
    return g


def track_parse(notes: dict, g: gc.Grammar | None, *, learn: bool, max_rules=None, min_count=None):
    """Parse (and, with ``learn``, extend the grammar on) a set of notes; pure function.

    Returns (grammar, final Sequence, terminals)."""
    term, _, _, _ = gc.terminals(notes["onset_ticks"], notes["duration_ticks"], notes["velocity"],
                                 notes["ticks_per_beat"], notes["track_starts"])
    seq = gc.initial_sequence(term, notes["pitch"], notes["track_starts"])
    g = g if g is not None else gc.Grammar()
    seq = gc.replay(seq, g)
    if learn:
        g, seq = gc.build(seq, g, max_rules=MAX_RULES if max_rules is None else max_rules,
                          min_count=MIN_COUNT if min_count is None else min_count)
    return g, seq, term


def _rules_table(g: gc.Grammar, ids: np.ndarray, origin: str, version: str = VERSION, counts=None) -> pa.Table:
    """``rules`` rows of these symbols; ``counts``: ``_rule_aggregates`` of the pieces
    that are all these rules' occurrences (else the counts are 0)."""
    ids = np.asarray(ids, np.int64)
    ivs, iv_off, terms, t_off = gc.rule_contours(g, ids)
    lengths = gc.rule_lengths(g)[ids]
    depths = gc.rule_depths(g)[ids]
    is_rule = ids >= gc.N_TERMINALS
    k = np.where(is_rule, ids - gc.N_TERMINALS, 0)
    n = len(ids)

    def lst(values, off, typ):
        return pa.ListArray.from_arrays(pa.array(off.astype(np.int32)), pa.array(values.astype(typ)))

    mask = ~is_rule

    def per_rule(k):
        out = np.zeros(n, np.int64)
        if counts is not None and len(counts[0]):
            j = np.minimum(np.searchsorted(counts[0], ids), len(counts[0]) - 1)
            hit = counts[0][j] == ids
            out[hit] = counts[k][j[hit]]
        return out

    return pa.table(
        {
            "rule_id": ids,
            "intervals": lst(ivs, iv_off, np.int16),
            "rhythm_buckets": lst(terms // 8, t_off, np.int8),
            "velocity_buckets": lst(terms % 8, t_off, np.int8),
            "left_child": pa.array(g.left[k] if g.n_rules else np.zeros(n, np.int64), mask=mask),
            "right_child": pa.array(g.right[k] if g.n_rules else np.zeros(n, np.int64), mask=mask),
            "connector_interval": pa.array((g.conn[k] if g.n_rules else np.zeros(n)).astype(np.int16), mask=mask),
            "depth": depths.astype(np.int32),
            "length": lengths.astype(np.int32),
            "count": per_rule(1).astype(np.int64),
            "n_pieces": per_rule(2).astype(np.int32),
            "n_top": per_rule(3).astype(np.int64),
            "origin": pa.array([origin] * n, pa.string()),
            "stage_version": pa.array([version] * n, pa.string()),
            "learn_round": pa.array((g.round[k] if g.n_rules else np.zeros(n)).astype(np.int32), mask=mask),
        }
    )


def _write(con, name: str, table: pa.Table) -> None:
    view = f"_gram_{name}"
    con.register(view, table)
    cols = ", ".join(table.column_names)
    con.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {view}")
    con.unregister(view)


def _write_parse(con, notes: dict, seq: gc.Sequence, g: gc.Grammar, version: str = VERSION):
    """Write the parses and every occurrence; returns the occurrences' (rule_id, track
    number, top_level) arrays, rule-major (track number: index into ``track_piece``), and
    the ``occurrences`` rows written (None if no notes)."""
    n = notes["n"]
    if n == 0:
        e = np.empty(0, np.int64)
        return e, e, np.empty(0, np.bool_), None
    ts = notes["track_starts"]
    # track of each note position
    track_of = np.repeat(np.arange(len(ts) - 1), np.diff(ts))
    # top-level symbols per track
    seq_track = track_of[seq.start]
    sym_off = np.searchsorted(seq_track, np.arange(len(ts)))
    symbols = pa.ListArray.from_arrays(pa.array(sym_off.astype(np.int32)), pa.array(seq.sym))
    _write(con, "grammar_sequences", pa.table({
        "piece_id": pa.array(notes["track_piece"], pa.string()),
        "track_index": notes["track_track"],
        "n_notes": np.diff(ts).astype(np.int32),
        "symbols": symbols,
        "stage_version": pa.array([version] * (len(ts) - 1), pa.string()),
    }))
    # rule-major order: DuckDB's per-row-group min/max then skips most of the table for
    # ``WHERE rule_id = ?``
    rule, start, first, top = gc.expand_by_rule(seq, g)
    tr = track_of[start]
    # the piece ids as a dictionary of the batch's pieces: no string per row is made
    # (DuckDB stores the same strings)
    pieces = pa.array(notes["track_piece"], pa.string()).dictionary_encode()
    piece_col = pa.DictionaryArray.from_arrays(
        pa.array(pieces.indices.to_numpy(zero_copy_only=False)[tr].astype(np.int32)), pieces.dictionary)
    occ = pa.table({
        "rule_id": rule,
        "piece_id": piece_col,
        "track_index": notes["track_track"][tr],
        "note_index": notes["note_index"][start].astype(np.int32),
        "seq_index": (start - ts[tr]).astype(np.int32),
        "onset_ticks": notes["onset_ticks"][start],
        "onset_beats": notes["onset_beats"][start],
        "onset_s": notes["onset_s"][start],
        "first_pitch": first.astype(np.int16),
        "top_level": top,
    })
    _write(con, "occurrences", occ)
    return rule, tr, top, occ


def _ensure_terminals(con, g: gc.Grammar) -> None:
    if con.execute("SELECT count(*) FROM rules WHERE rule_id < ?", [gc.N_TERMINALS]).fetchall()[0][0]:
        return
    _write(con, "rules", _rules_table(g, np.arange(gc.N_TERMINALS), "terminal"))


def _recount(con) -> None:
    """Recompute count/n_pieces/n_top of every learned rule from ``occurrences``."""
    con.execute(f"UPDATE rules SET count = 0, n_pieces = 0, n_top = 0 WHERE rule_id >= {gc.N_TERMINALS}")
    con.execute("""
        UPDATE rules SET count = c.n, n_pieces = c.np, n_top = c.nt
        FROM (SELECT rule_id, count(*) AS n, count(DISTINCT piece_id) AS np,
                     count(*) FILTER (top_level) AS nt
              FROM occurrences GROUP BY rule_id) c
        WHERE rules.rule_id = c.rule_id""")


def _rule_aggregates(notes: dict, occ):
    """Per rule occurring in the new pieces (``_write_parse``'s arrays): (rule ids
    ascending, occurrences, distinct pieces, top-level occurrences)."""
    rule, tr, top = occ[:3]
    if not len(rule):
        e = np.empty(0, np.int64)
        return e, e, e, e
    piece_codes = pa.array(notes["track_piece"], pa.string()).dictionary_encode().indices.to_numpy(
        zero_copy_only=False).astype(np.int64)
    pc_ = piece_codes[tr]
    starts = np.flatnonzero(np.concatenate([[True], rule[1:] != rule[:-1]]))
    rules = rule[starts]
    n = np.diff(np.concatenate([starts, [len(rule)]]))
    nt = np.add.reduceat(top.astype(np.int64), starts)
    if np.all(np.diff(piece_codes) >= 0):
        # tracks come piece by piece and a rule's occurrences in note order: its pieces
        # are runs, one per piece
        new_piece = np.concatenate([[True], (rule[1:] != rule[:-1]) | (pc_[1:] != pc_[:-1])])
        n_pieces = np.add.reduceat(new_piece.astype(np.int64), starts)
    else:
        m = int(piece_codes.max()) + 1
        pairs = np.unique(rule * m + pc_)
        n_pieces = np.diff(np.concatenate([np.searchsorted(pairs // m, rules), [len(pairs)]]))
    return rules, n.astype(np.int64), n_pieces.astype(np.int64), nt


def _add_rule_counts(con, aggregates, new_from: int) -> None:
    """Add the new pieces' occurrences to ``count``, ``n_pieces`` and ``n_top`` of the
    rules older than ``new_from`` (newer ones are written with their counts), without
    reading ``occurrences``: exact because the pieces had no occurrences before
    (``forget`` ran first)."""
    rules, n, n_pieces, nt = aggregates
    old = rules < new_from
    if not old.any():
        return
    con.register("_gram_rc", pa.table({"rule_id": rules[old], "n": n[old], "np": n_pieces[old], "nt": nt[old]}))
    con.execute("""UPDATE rules SET count = rules.count + c.n, n_pieces = rules.n_pieces + c.np,
                   n_top = rules.n_top + c.nt FROM _gram_rc c WHERE rules.rule_id = c.rule_id""")
    con.unregister("_gram_rc")


def _add_meta_counts(con, g: gc.Grammar, occ: pa.Table | None) -> None:
    """Add the new pieces' transposition steps to the counts behind ``meta_patterns``."""
    if occ is None:
        return
    rule = occ.column("rule_id").to_numpy()
    keep = (gc.rule_lengths(g)[rule] >= gt.MIN_TRANSFORM_LENGTH) & occ.column("top_level").to_numpy(
        zero_copy_only=False)
    con.register("_gram_meta", occ.select(["piece_id", "track_index", "seq_index", "rule_id", "first_pitch"])
                 .filter(pa.array(keep)))
    gt.add_meta_counts(con, "_gram_meta")
    con.unregister("_gram_meta")


def _add_terminal_counts(con, term_counts) -> None:
    counts, pieces = term_counts
    t = pa.table({"rule_id": np.arange(gc.N_TERMINALS, dtype=np.int64), "n": counts.astype(np.int64),
                  "np": pieces.astype(np.int64)})
    con.register("_gram_tc", t)
    con.execute("""UPDATE rules SET count = rules.count + c.n, n_pieces = rules.n_pieces + c.np,
                   n_top = rules.n_top + c.n
                   FROM _gram_tc c WHERE rules.rule_id = c.rule_id AND c.n <> 0""")
    con.unregister("_gram_tc")


def _terminal_counts(notes: dict, term: np.ndarray):
    """Per terminal: notes, and distinct pieces."""
    counts = np.bincount(term, minlength=gc.N_TERMINALS)
    ts = notes["track_starts"]
    track_of = np.repeat(np.arange(len(ts) - 1), np.diff(ts))
    piece_codes = pa.array(notes["track_piece"], pa.string()).dictionary_encode().indices.to_numpy(
        zero_copy_only=False) if len(ts) > 1 else np.empty(0, np.int64)
    pc = piece_codes[track_of] if len(term) else np.empty(0, np.int64)
    n_pc = int(pc.max()) + 1 if len(pc) else 0
    seen = np.bincount(pc.astype(np.int64) * gc.N_TERMINALS + term, minlength=n_pc * gc.N_TERMINALS)
    pieces = (seen.reshape(n_pc, gc.N_TERMINALS) > 0).sum(axis=0)
    return counts, pieces


def _interval_counts(notes: dict) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of the intervals between successive notes of each track (grammar
    order): (interval values ascending, counts)."""
    p = notes["pitch"].astype(np.int64)
    if len(p) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    ok = np.ones(len(p) - 1, np.bool_)
    ok[notes["track_starts"][1:-1] - 1] = False  # no interval across tracks
    d = np.diff(p)[ok]
    lo = int(d.min()) if len(d) else 0
    c = np.bincount(d - lo)
    values = np.flatnonzero(c)
    return values + lo, c[values]


def _add_interval_counts(con, notes: dict, sign: int = 1) -> None:
    values, counts = _interval_counts(notes)
    if not len(values):
        return
    con.register("_gram_iv", pa.table({"interval_semitones": values.astype(np.int16),
                                       "n_intervals": sign * counts.astype(np.int64)}))
    con.execute("""INSERT INTO grammar_interval_counts SELECT * FROM _gram_iv
                   ON CONFLICT (interval_semitones) DO UPDATE SET n_intervals = n_intervals + excluded.n_intervals""")
    con.unregister("_gram_iv")
    if sign < 0:
        con.execute("DELETE FROM grammar_interval_counts WHERE n_intervals = 0")


def stored_settings(con) -> tuple[int, int] | None:
    """(max_rules, min_count) the database's grammar was built with (its first rule's
    ``stage_version``), or None when it has no rules yet. They belong to the grammar:
    later ingests learn with them, whatever the environment says, until ``atlas reindex
    --grammar`` builds it again (with ``--max-rules``/``--min-count`` or the defaults)."""
    row = con.execute("SELECT stage_version FROM rules WHERE rule_id >= ? ORDER BY rule_id LIMIT 1",
                      [gc.N_TERMINALS]).fetchall()
    m = re.search(r"max_rules=(\d+) min_count=(\d+)", row[0][0] or "") if row else None
    return (int(m.group(1)), int(m.group(2))) if m else None


def update(con, piece_ids: list[str], notes: str = "notes") -> str:
    """Encode these pieces with the existing rules and learn new ones (see module doc),
    with the grammar's own settings (:func:`stored_settings`); their notes are read
    from the relation ``notes``. Returns the version string of those settings (for
    ``derived_runs``)."""
    notes = load_notes(con, list(piece_ids), notes)
    g = load_grammar(con)
    _ensure_terminals(con, g)
    n_old = g.n_rules
    max_rules, min_count = (stored_settings(con) if n_old else None) or (MAX_RULES, MIN_COUNT)
    version = version_string(max_rules, min_count)
    g, seq, term = track_parse(notes, g, learn=True, max_rules=max_rules, min_count=min_count)
    origin = "build" if n_old == 0 else "incremental"
    new_from = gc.N_TERMINALS + n_old
    occ = _write_parse(con, notes, seq, g, version)
    agg = _rule_aggregates(notes, occ)
    if g.n_rules > n_old:
        _write(con, "rules", _rules_table(g, np.arange(new_from, gc.N_TERMINALS + g.n_rules), origin, version,
                                          counts=agg))
    _add_rule_counts(con, agg, new_from)
    _add_terminal_counts(con, _terminal_counts(notes, term))
    _add_interval_counts(con, notes)
    _add_meta_counts(con, g, occ[3])
    gt.track_transforms(con, list(piece_ids), version, notes)
    gt.refresh_corpus_level(con, version, new_from=new_from, grammar=g)
    return version


def forget(con, piece_ids: list[str]) -> None:
    """Remove these pieces' parses and occurrences (rules stay; counts are corrected)."""
    con.register("_gram_ids", pa.table({"piece_id": pa.array(list(piece_ids), pa.string())}))
    done = [r[0] for r in con.execute(
        "SELECT DISTINCT piece_id FROM grammar_sequences WHERE piece_id IN (SELECT piece_id FROM _gram_ids) "
        "ORDER BY piece_id").fetchall()]
    if done:
        gone = f"(SELECT * FROM {STORED_META_SOURCE} WHERE piece_id IN (SELECT piece_id FROM _gram_ids))"
        gt.add_meta_counts(con, gone, -1)
        con.execute("DELETE FROM occurrences WHERE piece_id IN (SELECT piece_id FROM _gram_ids)")
        con.execute("DELETE FROM grammar_sequences WHERE piece_id IN (SELECT piece_id FROM _gram_ids)")
    con.unregister("_gram_ids")
    if done:
        notes = load_notes(con, done)
        term = gc.terminals(notes["onset_ticks"], notes["duration_ticks"], notes["velocity"],
                            notes["ticks_per_beat"], notes["track_starts"])[0]
        counts, pieces = _terminal_counts(notes, term)
        _add_terminal_counts(con, (-counts, -pieces))
        _add_interval_counts(con, notes, -1)
        _recount(con)
        gt.refresh_rule_counts(con)


def rebuild(con, *, max_rules: int | None = None, min_count: int | None = None) -> dict:
    """Delete the grammar and build it from scratch over every piece (``atlas reindex
    --grammar``). Runs inside the caller's transaction; returns a summary.

    Rows and ``derived_runs`` record the parameters used in ``stage_version`` (ingestion
    redoes no piece the stage has a run of, whatever its version), and later ingests
    learn with them (:func:`stored_settings`)."""
    for t in ("occurrences", "grammar_sequences", "rules", "transform_rows", "transform_gains", "grammar_choices",
              "meta_patterns", "grammar_interval_counts", "meta_pattern_counts", "meta_step_counts"):
        con.execute(f"DELETE FROM {t}")
    notes = load_notes(con, None)
    g = gc.Grammar()
    _ensure_terminals(con, g)
    max_rules = MAX_RULES if max_rules is None else int(max_rules)
    min_count = MIN_COUNT if min_count is None else int(min_count)
    version = version_string(max_rules, min_count)
    g, seq, term = track_parse(notes, g, learn=True, max_rules=max_rules, min_count=min_count)
    occ = _write_parse(con, notes, seq, g, version)
    if g.n_rules:
        _write(con, "rules", _rules_table(g, np.arange(gc.N_TERMINALS, gc.N_TERMINALS + g.n_rules), "build",
                                          version, counts=_rule_aggregates(notes, occ)))
    _add_terminal_counts(con, _terminal_counts(notes, term))
    _add_interval_counts(con, notes)
    _add_meta_counts(con, g, occ[3])
    gt.track_transforms(con, None, version, notes)
    gt.refresh_corpus_level(con, version, grammar=g)
    pieces = sorted(set(notes["track_piece"]))
    now = datetime.now(timezone.utc)
    con.execute("DELETE FROM derived_runs WHERE stage = ?", [STAGE])
    con.register("_gram_runs", pa.table({
        "stage": pa.array([STAGE] * len(pieces), pa.string()),
        "piece_id": pa.array(pieces, pa.string()),
        "stage_version": pa.array([version] * len(pieces), pa.string()),
        "done_at": pa.array([now] * len(pieces), pa.timestamp("us", tz="UTC")),
    }))
    con.execute("INSERT INTO derived_runs SELECT * FROM _gram_runs")
    con.unregister("_gram_runs")
    return {"pieces": len(pieces), "notes": int(notes["n"]), "rules": g.n_rules,
            "top_level_symbols": len(seq)}
