"""Transforms on top of the grammar, each with the description length it saves.

Rule scope (corpus-wide, rules of at least ``MIN_TRANSFORM_LENGTH`` notes; contours are
compared on intervals and on the *inner* rhythm buckets, i.e. all but the last note's,
which depends on what follows the rule):

- ``I`` inversion: intervals negated;
- ``R`` retrograde: the pitches in reverse order (intervals reversed and negated, inner
  rhythm reversed);
- ``RI`` retrograde inversion: intervals reversed, inner rhythm reversed;
- ``augmentation`` / ``diminution``: same intervals, every inner inter-onset interval
  doubled / halved (``rhythm_ratio`` 2.0 / 0.5);
- ``octave``: intervals equal modulo 12 but not equal (a note displaced by octaves).

The gain of describing the target rule as a transform of the source: spelling the target
out costs ``8 (length - 1) + 7 length`` bits (8 per interval, 7 per terminal); naming the
source and the transform costs ``log2(number of rules) + log2(6)`` bits. Only positive
gains are kept.

Track scope (per piece, pairs of tracks, one voice per track: the highest note at each
onset; ``n_notes`` = onsets shared by both tracks):

- ``doubling``: the most common pitch difference at shared onsets covers at least half of
  the smaller track's onsets (``interval`` = that difference: 12 = an octave up);
- ``parallel``: not a doubling, and at least half of the steps between successive shared
  onsets move both voices in the same direction by sizes within one semitone;
- ``rhythmic_unison``: neither, and at least 80 % of the smaller track's onsets are shared.

Gain: a doubled note's pitch (7 bits) and rhythm (4 bits) come from the other track, a
parallel step's rhythm (4 bits) and direction (1 bit), a unison onset's rhythm (4 bits);
minus 32 bits to state the relation.

Corpus choices (``grammar_choices``), from the histogram of intervals between successive
notes of every encoded track (chords included; kept in ``grammar_interval_counts``): ``interval_alphabet`` compares coding each interval
directly (chromatic) with coding it as a diatonic step count plus an alteration, each
factor with its own entropy code; ``octave_equivalence`` compares direct coding with
pitch-class interval plus octave count. Cost = empirical entropy x intervals + half
log2(intervals) bits per free parameter (MDL).

Meta-patterns: per track, successive occurrences of the same rule (at least
``MIN_TRANSFORM_LENGTH`` notes) are related by a transposition ``T+n``; sequences of two or
three consecutive such steps that recur (at least 3 times, in at least 2 pieces) are
stored in ``meta_patterns`` (from running counts, ``meta_pattern_counts`` and
``meta_step_counts``, that each update adds its pieces to).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from numba import njit

from atlas_db.schema_grammar import MIN_TRANSFORM_LENGTH, meta_grams_cte

__all__ = ["MIN_TRANSFORM_LENGTH", "rule_transforms", "rule_transform_pairs", "refresh_rule_counts",
           "track_transforms", "interval_choices", "add_meta_counts", "meta_patterns", "refresh_corpus_level"]

# bucket index of twice each nominal IOI (None where the doubled value is no bucket)
_DOUBLE = [0, 3, 4, 5, 6, 8, 9, 10, 11, None, 12, 13, 14, 15, None, None]


def _double_list_sql() -> str:
    """``_DOUBLE`` as a DuckDB list literal (the SQL form of the augmentation match)."""
    return "[" + ", ".join("NULL" if v is None else str(v) for v in _DOUBLE) + "]"


# Up to this many new rule-transform rows take their targets' lengths by a join; more (a
# build) read every rule's length once instead.
JOIN_MAX_ROWS = 50_000
_KINDS = ("I", "R", "RI", "augmentation", "octave")  # insertion order of the rows (ids)
_SYMMETRIC = (True, True, True, False, True)  # stored once per pair: source < target
_DOUBLE_CODE = np.array([-1 if v is None else v for v in _DOUBLE], np.int64)


@njit(cache=True)
def _mix(x):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True)
def _contour_keys(left, right, conn, double):
    """Per symbol (terminals, then rules): a key of its contour (length, intervals, inner
    rhythm) and, per kind, the key its transform has (``src[kind]``), so that ``b`` is
    the kind-transform of ``a`` only if ``src[kind, a] == key[b]`` (hash of the target,
    checked exactly afterwards). O(symbols): each rule's hashes come from its children's
    (polynomial hashes concatenate: H(s || t) = H(s) B^|t| + H(t)).
    Returns (key, src [shape=(5, n)], valid [shape=(5, n)]); octave uses the key of the
    intervals modulo 12 on both sides (``src[4]`` is also the target side)."""
    nt = 128
    n = nt + len(left)
    B = np.uint64(0x9E3779B97F4A7C15)
    PL = np.empty(n, np.uint64)  # B^length
    P1 = np.empty(n, np.uint64)  # B^(length - 1)
    hI = np.zeros(n, np.uint64)  # intervals
    hIn = np.zeros(n, np.uint64)  # intervals negated
    hIm = np.zeros(n, np.uint64)  # intervals modulo 12
    hIr = np.zeros(n, np.uint64)  # intervals reversed
    hInr = np.zeros(n, np.uint64)  # reversed and negated
    hF = np.zeros(n, np.uint64)  # rhythm of every note
    hFr = np.zeros(n, np.uint64)
    hR = np.zeros(n, np.uint64)  # inner rhythm (all notes but the last)
    hRr = np.zeros(n, np.uint64)
    hDF = np.zeros(n, np.uint64)  # rhythm doubled (augmentation)
    hDR = np.zeros(n, np.uint64)
    nDF = np.zeros(n, np.bool_)  # some bucket has no double
    nDR = np.zeros(n, np.bool_)
    mF = np.zeros(n, np.int64)  # largest bucket
    mR = np.full(n, -1, np.int64)
    ln = np.ones(n, np.int64)
    for t in range(nt):
        rb = t // 8
        PL[t] = B
        P1[t] = np.uint64(1)
        hF[t] = np.uint64(rb + 1)
        hFr[t] = hF[t]
        if double[rb] < 0:
            nDF[t] = True
        else:
            hDF[t] = np.uint64(double[rb] + 1)
        mF[t] = rb
    for k in range(len(left)):
        x = nt + k
        a = left[k]
        b = right[k]
        c = conn[k]
        ln[x] = ln[a] + ln[b]
        PL[x] = PL[a] * PL[b]
        P1[x] = PL[a] * P1[b]
        hI[x] = (hI[a] * B + np.uint64(c + 256)) * P1[b] + hI[b]
        hIn[x] = (hIn[a] * B + np.uint64(-c + 256)) * P1[b] + hIn[b]
        hIm[x] = (hIm[a] * B + np.uint64(((c % 12) + 12) % 12 + 1)) * P1[b] + hIm[b]
        hIr[x] = (hIr[b] * B + np.uint64(c + 256)) * P1[a] + hIr[a]
        hInr[x] = (hInr[b] * B + np.uint64(-c + 256)) * P1[a] + hInr[a]
        hF[x] = hF[a] * PL[b] + hF[b]
        hFr[x] = hFr[b] * PL[a] + hFr[a]
        hR[x] = hF[a] * P1[b] + hR[b]
        hRr[x] = hRr[b] * PL[a] + hFr[a]
        hDF[x] = hDF[a] * PL[b] + hDF[b]
        hDR[x] = hDF[a] * P1[b] + hDR[b]
        nDF[x] = nDF[a] or nDF[b]
        nDR[x] = nDF[a] or nDR[b]
        mF[x] = max(mF[a], mF[b])
        mR[x] = max(mF[a], mR[b])
    key = np.empty(n, np.uint64)
    src = np.empty((5, n), np.uint64)
    valid = np.empty((5, n), np.bool_)
    for x in range(n):
        L = _mix(np.uint64(ln[x]))
        key[x] = _mix(_mix(hI[x] ^ L) + hR[x])
        src[0, x] = _mix(_mix(hIn[x] ^ L) + hR[x])
        src[1, x] = _mix(_mix(hInr[x] ^ L) + hRr[x])
        src[2, x] = _mix(_mix(hIr[x] ^ L) + hRr[x])
        src[3, x] = _mix(_mix(hI[x] ^ L) + hDR[x])
        src[4, x] = _mix(_mix(hIm[x] ^ L) + hR[x])
        for kd in range(5):
            valid[kd, x] = ln[x] >= 4 and x >= nt
        valid[3, x] = valid[3, x] and not nDR[x] and mR[x] > 0
    return key, src, valid


def _equal_key_pairs(ka: np.ndarray, kb: np.ndarray):
    """Index pairs (i, j) with ``ka[i] == kb[j]``: a hash table of the smaller side,
    probed once per element of the larger one (O(len(ka) + len(kb)))."""
    if len(ka) <= len(kb):
        return _probe_pairs(ka, kb)
    j, i = _probe_pairs(kb, ka)
    return i, j


@njit(cache=True)
def _probe_pairs(small, big):
    """(index into small, index into big) of every equal pair."""
    ns = len(small)
    size = 16
    while size < 2 * ns + 2:
        size *= 2
    mask = np.uint64(size - 1)
    head = np.full(size, -1, np.int64)  # first small index with the key hashed here
    nxt = np.full(max(ns, 1), -1, np.int64)  # next small index with the same key
    for i in range(ns):
        h = (small[i] * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(20) & mask
        while True:
            f = head[h]
            if f == -1:
                head[h] = i
                break
            if small[f] == small[i]:
                nxt[i] = nxt[f]
                nxt[f] = i
                break
            h = (h + np.uint64(1)) & mask
    total = 0
    first = np.full(len(big), -1, np.int64)
    for j in range(len(big)):
        h = (big[j] * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(20) & mask
        while True:
            f = head[h]
            if f == -1:
                break
            if small[f] == big[j]:
                first[j] = f
                while f != -1:
                    total += 1
                    f = nxt[f]
                break
            h = (h + np.uint64(1)) & mask
    out_s = np.empty(total, np.int64)
    out_b = np.empty(total, np.int64)
    k = 0
    for j in range(len(big)):
        f = first[j]
        while f != -1:
            out_s[k] = f
            out_b[k] = j
            k += 1
            f = nxt[f]
    return out_s, out_b


@njit(cache=True)
def _verify(kind, pa_, pb_, iv, iv_off, rh, rh_off, double):
    """Exact check of candidate pairs: rule at row ``pb_[j]`` is the ``kind`` transform of
    the one at row ``pa_[j]`` (rows of the contour arrays; rh = rhythm buckets)."""
    ok = np.zeros(len(pa_), np.bool_)
    for j in range(len(pa_)):
        a = pa_[j]
        b = pb_[j]
        m = iv_off[a + 1] - iv_off[a]  # intervals = inner rhythm length
        if iv_off[b + 1] - iv_off[b] != m:
            continue
        ia = iv_off[a]
        ib = iv_off[b]
        ra = rh_off[a]
        rb = rh_off[b]
        good = True
        differs = False
        for i in range(m):
            r = m - 1 - i
            if kind == 0:
                good = iv[ib + i] == -iv[ia + i] and rh[rb + i] == rh[ra + i]
            elif kind == 1:
                good = iv[ib + i] == -iv[ia + r] and rh[rb + i] == rh[ra + r]
            elif kind == 2:
                good = iv[ib + i] == iv[ia + r] and rh[rb + i] == rh[ra + r]
            elif kind == 3:
                good = iv[ib + i] == iv[ia + i] and double[rh[ra + i]] >= 0 and rh[rb + i] == double[rh[ra + i]]
            else:
                good = (iv[ib + i] % 12 + 12) % 12 == (iv[ia + i] % 12 + 12) % 12 and rh[rb + i] == rh[ra + i]
                differs = differs or iv[ib + i] != iv[ia + i]
            if not good:
                break
        ok[j] = good and (kind != 4 or differs)
    return ok


def rule_transform_pairs(g, new_from: int, pointer: float) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(kind, source ids, target ids) of the rule-scope transforms with a rule ``>= new_from``
    on at least one side, in the order their rows get ids: per kind, pairs with a new
    source by (source, target), then pairs of an older source and a new target; each
    augmentation batch followed by its diminutions by (source, target)."""
    from ingest import grammar_core as gc

    key, src, valid = _contour_keys(g.left, g.right, g.conn, _DOUBLE_CODE)
    n = len(key)
    lengths = gc.rule_lengths(g)
    ids = np.arange(n, dtype=np.int64)
    base_ok = valid[0]
    found = []
    for kd, kind in enumerate(_KINDS):
        tkey = src[4] if kind == "octave" else key
        passes = [(ids[valid[kd] & (ids >= new_from)], ids[base_ok])]
        if new_from > 0:
            passes.append((ids[valid[kd] & (ids < new_from)], ids[base_ok & (ids >= new_from)]))
        for a_ids, b_ids in passes:
            i, j = _equal_key_pairs(src[kd][a_ids], tkey[b_ids])
            a, b = a_ids[i], b_ids[j]
            keep = (a < b) if _SYMMETRIC[kd] else (a != b)
            keep &= (8 * (lengths[b] - 1) + 7 * lengths[b]) - pointer > 0
            a, b = a[keep], b[keep]
            # by (source, target): pairs are distinct, so one argsort of a packed key
            # gives the lexsort's order
            o = np.argsort(a * n + b)
            found.append((kd, a[o], b[o]))
    # exact check on the contours of the rules involved (hashes only propose pairs)
    is_involved = np.zeros(n, np.bool_)
    for _, a, b in found:
        is_involved[a] = True
        is_involved[b] = True
    involved = np.flatnonzero(is_involved)
    row = np.cumsum(is_involved) - 1  # symbol -> its row in the contour arrays
    iv, iv_off, terms, t_off = gc.rule_contours(g, involved)
    rh = terms // 8
    rh_off = t_off  # inner rhythm: the first length - 1 buckets of each row
    out = []
    for kd, a, b in found:
        ok = _verify(kd, row[a], row[b], iv, iv_off, rh, rh_off, _DOUBLE_CODE)
        out.append((_KINDS[kd], a[ok], b[ok]))
    merged = []
    for kind in _KINDS:
        parts = [(a, b) for k, a, b in out if k == kind]
        a = np.concatenate([p[0] for p in parts])
        b = np.concatenate([p[1] for p in parts])
        merged.append((kind, a, b))
        if kind == "augmentation":
            o = np.argsort(b * n + a)
            merged.append(("diminution", b[o], a[o]))
    return merged


def rule_transforms(con, version: str, *, new_from: int | None = None, grammar=None) -> int:
    """Rule-scope transforms; returns how many rows it added (not a count of them all: at
    100k pieces that is a scan of 5M rows).

    ``new_from``: rules with ``rule_id >= new_from`` are new since the last call; only
    pairs involving one of them are searched (contours of older rules never change), then
    the gains per ``target_bits`` are set from the current number of rules (see
    :func:`_set_gains`; ``n_notes`` is the view's, from the rules' counts). ``None``:
    recompute everything. ``grammar``: the rules as a ``grammar_core.Grammar`` (read if
    None).

    Pairs are found by hashing each rule's contour and its transforms' (computed from the
    children, one pass over the rules, no scan of the table) and checked exactly."""
    have = con.execute("SELECT 1 FROM transform_rows WHERE scope = 'rule' LIMIT 1").fetchall()  # not a count of them all
    if new_from is None or not have:
        con.execute("DELETE FROM transform_rows WHERE scope = 'rule'")
        new_from = 0
    if grammar is None:
        from ingest.grammar import load_grammar  # (ingest.grammar imports this module)

        grammar = load_grammar(con)
    g = grammar
    n_rules = max(128 + g.n_rules, 2)
    pointer = math.log2(n_rules) + math.log2(6)
    pairs = rule_transform_pairs(g, int(new_from), pointer)
    if new_from == 0:
        con.execute("DELETE FROM transform_gains")
    base = con.execute("SELECT coalesce(max(transform_id), 0) FROM transform_rows").fetchall()[0][0]
    _insert_rule_rows(con, pairs, base, version)
    _add_gain_rows(con, base)
    # counts and the number of rules changed: refresh what depends on them (rows just
    # computed over every rule are current)
    if new_from > 0:
        refresh_rule_counts(con, pointer)
    else:
        _set_gains(con, pointer)
    return sum(len(a) for _, a, _ in pairs)


def _insert_rule_rows(con, pairs, base: int, version: str) -> None:
    """Insert ``rule_transform_pairs``' rows into ``transform_rows`` with ids from
    ``base + 1``; ``target_bits`` from the target rule's ``length`` (``n_notes`` and the
    gain are the view's: see ``atlas_db.schema_grammar.TRANSFORMS_VIEW``)."""
    sizes = [len(a) for _, a, _ in pairs]
    n = sum(sizes)
    if not n:
        return
    names = [k for k, _, _ in pairs]
    kind = pa.DictionaryArray.from_arrays(pa.array(np.repeat(np.arange(len(names), dtype=np.int32), sizes)),
                                          pa.array(names, pa.string()))
    ratio = np.concatenate([np.full(m, {"augmentation": 2.0, "diminution": 0.5}.get(k, np.nan))
                            for k, m in zip(names, sizes)])
    rows = {
        "transform_id": np.arange(base + 1, base + 1 + n, dtype=np.int64),
        "kind": kind,
        "source_rule_id": np.concatenate([a for _, a, _ in pairs]),
        "target_rule_id": np.concatenate([b for _, _, b in pairs]),
        "rhythm_ratio": pa.array(ratio, pa.float64(), mask=np.isnan(ratio)),
    }
    if n < JOIN_MAX_ROWS:  # a few new rules: join their targets
        con.register("_gt_new", pa.table(rows))
        con.execute(f"""
            INSERT INTO transform_rows
            SELECT t.transform_id, 'rule', t.kind, t.source_rule_id, t.target_rule_id, NULL, NULL, NULL, NULL,
                   t.rhythm_ratio, NULL, {_TARGET_BITS}, NULL, '{version}'
            FROM _gt_new t JOIN rules r ON r.rule_id = t.target_rule_id""")
        con.unregister("_gt_new")
        return
    # many rows (a build): the targets' lengths read once
    r = con.execute("SELECT rule_id, length FROM rules ORDER BY rule_id").fetchnumpy()
    ids = r["rule_id"]
    if len(ids) and int(ids[-1]) - int(ids[0]) + 1 == len(ids):
        at = rows["target_rule_id"] - ids[0]  # ids without gaps (always, so far): no search
    else:
        at = np.searchsorted(ids, rows["target_rule_id"])
    length = r["length"].astype(np.int64)[at]
    rows["target_bits"] = (8 * (length - 1) + 7 * length).astype(np.int32)
    con.register("_gt_new", pa.table(rows))
    con.execute(f"""
        INSERT INTO transform_rows
        SELECT transform_id, 'rule', kind, source_rule_id, target_rule_id, NULL, NULL, NULL, NULL,
               rhythm_ratio, NULL, target_bits, NULL, '{version}' FROM _gt_new""")
    con.unregister("_gt_new")


# bits to spell a rule out (8 per interval, 7 per terminal), from ``rules r``; an INTEGER
_TARGET_BITS = "8 * (r.length - 1) + 7 * r.length"


def _set_gains(con, pointer: float) -> None:
    """``transform_gains``: the gain at this ``pointer`` (bits to name a rule and a
    transform) of every ``target_bits`` a rule-scope row has had (one per rule length: 14
    rows at 100k generated pieces; stored in each of the 4.9M rule-scope rows there, an
    UPDATE of them all was needed whenever the number of rules grew). The SQL expression
    (an INTEGER minus the pointer as a DECIMAL literal, cast to DOUBLE) is the one those
    rows were written with, so the view ``transforms`` shows the same doubles."""
    con.execute(f"UPDATE transform_gains SET gain_bits = CAST(target_bits - {pointer} AS DOUBLE)")


def _add_gain_rows(con, after_id: int) -> None:
    """A ``transform_gains`` row (gain set by :func:`_set_gains`) for each ``target_bits``
    of the rule-scope rows with ``transform_id > after_id`` that has none yet."""
    con.execute(f"""INSERT INTO transform_gains
                    SELECT DISTINCT target_bits, NULL FROM transform_rows
                    WHERE transform_id > {int(after_id)} AND scope = 'rule'
                    ON CONFLICT DO NOTHING""")


def refresh_rule_counts(con, pointer: float | None = None) -> None:
    """The gains of the rule-scope transforms (``transform_gains``) at the current number
    of rules; rows whose gain is not positive are dropped. Their ``n_notes`` needs nothing:
    the view ``transforms`` reads it from the rules' counts. ``pointer``: bits to name a
    rule and a transform (computed from the number of rules if None)."""
    if pointer is None:
        pointer = math.log2(max(con.execute("SELECT count(*) FROM rules").fetchall()[0][0], 2)) + math.log2(6)
    _set_gains(con, pointer)
    if con.execute("SELECT 1 FROM transform_gains WHERE gain_bits <= 0 LIMIT 1").fetchall():
        con.execute("""DELETE FROM transform_rows WHERE scope = 'rule'
                       AND target_bits IN (SELECT target_bits FROM transform_gains WHERE gain_bits <= 0)""")
        con.execute("DELETE FROM transform_gains WHERE gain_bits <= 0")


def _track_pairs(notes: dict):
    """Per pair of tracks of one piece (track numbers ``ta < tb`` into the notes' track
    arrays, by piece, ta, tb) that share an onset: onsets shared, the most common pitch
    difference ``pb - pa`` at them, steps between successive shared onsets, steps in
    parallel motion, onsets at that difference, and the smaller track's number of onsets.
    Each track's voice is its highest note at each onset.

    This was one SQL query (a self-join of the notes on onset, a window for the steps,
    ``mode`` for the difference): 1.3-1.4 s CPU for pop909-dev, under 0.1 s here. A tie
    for the most common difference goes to the one met first in onset order; ``mode``
    gave whichever reached its aggregate first, which varies with DuckDB's threads (it
    can only change a doubling's ``interval``: no such tie in pop909-dev)."""
    ts = notes["track_starts"]
    n = int(notes["n"])
    e = np.empty(0, np.int64)
    if n == 0:
        return (e,) * 8
    onset = np.asarray(notes["onset_ticks"], np.int64)
    pitch = np.asarray(notes["pitch"], np.int64)
    # the voice: in grammar order the last note of an onset in a track is its highest
    last = np.ones(n, np.bool_)
    last[:-1] = onset[1:] != onset[:-1]
    last[ts[1:] - 1] = True
    keep = np.flatnonzero(last)
    v_starts = np.searchsorted(keep, ts).astype(np.int64)
    piece = notes["track_piece"]
    new_piece = np.ones(len(piece), np.bool_)
    new_piece[1:] = [a != b for a, b in zip(piece[1:], piece[:-1])]
    piece_starts = np.concatenate([np.flatnonzero(new_piece), [len(piece)]]).astype(np.int64)
    span = int(pitch.max()) - int(pitch.min())  # differences lie in -span..span
    return tuple(_track_pairs_nb(v_starts, piece_starts, onset[keep], pitch[keep], span))


@njit(cache=True)
def _track_pairs_nb(v_starts, piece_starts, onset, pitch, span):
    n_pairs = 0
    for p in range(len(piece_starts) - 1):
        k = piece_starts[p + 1] - piece_starts[p]
        n_pairs += k * (k - 1) // 2
    # per pair: ta, tb, shared, diff, n_steps, parallel steps, n_diff, smaller
    out = np.empty((8, n_pairs), np.int64)
    count = np.zeros(2 * span + 1, np.int64)  # per difference + span, reset after each pair
    first = np.zeros(2 * span + 1, np.int64)  # its first shared onset (rank)
    seen = np.empty(len(onset), np.int64)  # differences of the current pair, in onset order
    m = 0
    for p in range(len(piece_starts) - 1):
        for a in range(piece_starts[p], piece_starts[p + 1]):
            for b in range(a + 1, piece_starts[p + 1]):
                i, i_end = v_starts[a], v_starts[a + 1]
                j, j_end = v_starts[b], v_starts[b + 1]
                s = 0
                steps_par = 0
                prev_a = 0
                prev_b = 0
                while i < i_end and j < j_end:
                    if onset[i] < onset[j]:
                        i += 1
                    elif onset[i] > onset[j]:
                        j += 1
                    else:
                        pa_, pb_ = pitch[i], pitch[j]
                        d = pb_ - pa_ + span
                        if count[d] == 0:
                            first[d] = s
                        count[d] += 1
                        seen[s] = d
                        if s > 0:
                            da = pa_ - prev_a
                            db = pb_ - prev_b
                            if da != 0 and np.sign(da) == np.sign(db) and abs(da - db) <= 1:
                                steps_par += 1
                        prev_a = pa_
                        prev_b = pb_
                        s += 1
                        i += 1
                        j += 1
                if s == 0:
                    continue
                best = seen[0]
                for q in range(s):
                    d = seen[q]
                    if count[d] > count[best] or (count[d] == count[best] and first[d] < first[best]):
                        best = d
                out[0, m] = a
                out[1, m] = b
                out[2, m] = s
                out[3, m] = best - span
                out[4, m] = s - 1
                out[5, m] = steps_par
                out[6, m] = count[best]
                out[7, m] = min(v_starts[a + 1] - v_starts[a], v_starts[b + 1] - v_starts[b])
                m += 1
                for q in range(s):
                    count[seen[q]] = 0
    return out[:, :m]


def track_transforms(con, piece_ids: list[str] | None, version: str, notes: dict | None = None) -> int:
    """Doubling / parallel motion / rhythmic unison between the tracks of these pieces.

    ``notes``: these pieces' notes as ``ingest.grammar.load_notes`` gives them, when the
    caller holds them already; else they are read."""
    if notes is None:
        from ingest.grammar import load_notes  # (ingest.grammar imports this module)

        notes = load_notes(con, None if piece_ids is None else list(piece_ids))
    if piece_ids is None:
        con.execute("DELETE FROM transform_rows WHERE scope = 'track'")
    else:
        con.register("_gt_ids", pa.table({"piece_id": pa.array(list(piece_ids), pa.string())}))
        con.execute("DELETE FROM transform_rows WHERE scope = 'track' AND piece_id IN (SELECT piece_id FROM _gt_ids)")
        con.unregister("_gt_ids")
    ta, tb, shared, diff, n_steps, par, n_diff, smaller = _track_pairs(notes)
    piece = notes["track_piece"]
    track = notes["track_track"].tolist()
    out = []
    for a, b, shared, diff, n_steps, par, n_diff, smaller in zip(
            ta.tolist(), tb.tolist(), shared.tolist(), diff.tolist(), n_steps.tolist(), par.tolist(),
            n_diff.tolist(), smaller.tolist()):
        pid, ta_, tb_ = piece[a], track[a], track[b]
        if n_diff >= 0.5 * smaller and n_diff >= 8:
            out.append((pid, ta_, tb_, "doubling", int(diff), n_diff, n_diff * 11 - 32))
        elif n_steps >= 8 and par >= 0.5 * n_steps:
            out.append((pid, ta_, tb_, "parallel", None, par, par * 5 - 32))
        elif shared >= 0.8 * smaller and shared >= 8:
            out.append((pid, ta_, tb_, "rhythmic_unison", None, shared, shared * 4 - 32))
    out = [r for r in out if r[6] > 0]
    if not out:
        return 0
    base = con.execute("SELECT coalesce(max(transform_id), 0) FROM transform_rows").fetchall()[0][0]
    t = pa.table({
        "transform_id": pa.array(np.arange(base + 1, base + 1 + len(out)), pa.int64()),
        "scope": ["track"] * len(out), "kind": [r[3] for r in out],
        "source_rule_id": pa.nulls(len(out), pa.int64()), "target_rule_id": pa.nulls(len(out), pa.int64()),
        "piece_id": [r[0] for r in out],
        "source_track": pa.array([r[1] for r in out], pa.int32()),
        "target_track": pa.array([r[2] for r in out], pa.int32()),
        "interval": pa.array([r[4] for r in out], pa.int16()),
        "rhythm_ratio": pa.nulls(len(out), pa.float64()),
        "n_notes": pa.array([r[5] for r in out], pa.int64()),
        "gain_bits": pa.array([float(r[6]) for r in out], pa.float64()),
        "stage_version": [version] * len(out),
    })
    con.register("_gt_rows", t)
    con.execute("INSERT INTO transform_rows BY NAME SELECT * FROM _gt_rows")
    con.unregister("_gt_rows")
    return len(out)


def _entropy_bits(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    return float(-(c * np.log2(c / n)).sum())


def _model_bits(counts: np.ndarray, n: float) -> float:
    return 0.5 * max(int((counts > 0).sum()) - 1, 0) * math.log2(max(n, 2))


def _code_bits(weights: np.ndarray, *factors) -> float:
    """Bits to code values as independent factors, each with its own entropy code.

    The values come as a histogram: ``factors`` give each bin's value of every factor,
    ``weights`` how many values fall in the bin."""
    total = 0.0
    n = int(weights.sum())
    for f in factors:
        _, inv = np.unique(f, return_inverse=True)
        c = np.bincount(inv.ravel(), weights=weights).astype(np.int64)
        total += _entropy_bits(c) + _model_bits(c, n)
    return total


# diatonic step count of each chromatic interval within an octave (major-scale spelling)
_STEP_OF = np.array([0, 1, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6])
_NOMINAL_OF_STEP = np.array([0, 2, 4, 5, 7, 9, 11])


def interval_choices(con, version: str) -> None:
    """Corpus MDL choices: chromatic vs diatonic intervals, octave equivalence, from the
    interval histogram of the encoded tracks (``grammar_interval_counts``)."""
    h = con.execute("SELECT interval_semitones, n_intervals FROM grammar_interval_counts "
                    "WHERE n_intervals > 0 ORDER BY interval_semitones").fetchnumpy()
    iv = h["interval_semitones"].astype(np.int64)
    w = h["n_intervals"].astype(np.int64)
    n_iv = int(w.sum())
    con.execute("DELETE FROM grammar_choices")
    if n_iv < 2:
        return
    direct = _code_bits(w, iv)
    octv, pc = np.divmod(iv, 12)
    octave = _code_bits(w, pc, octv)
    steps = octv * 7 + _STEP_OF[pc]
    alter = pc - _NOMINAL_OF_STEP[_STEP_OF[pc]]
    diatonic = _code_bits(w, steps, alter)
    rows = []
    for choice, a_name, a_bits, b_name, b_bits in [
        ("interval_alphabet", "chromatic", direct, "diatonic", diatonic),
        ("octave_equivalence", "no", direct, "yes", octave),
    ]:
        chosen, alt, cb, ab = (a_name, b_name, a_bits, b_bits) if a_bits <= b_bits else (b_name, a_name, b_bits, a_bits)
        rows.append((choice, chosen, alt, cb, ab, ab - cb, n_iv, version))
    con.executemany("INSERT INTO grammar_choices VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def add_meta_counts(con, source: str, sign: int = 1) -> None:
    """Add (``sign`` 1) or remove (-1) the steps and step sequences of the whole pieces in
    ``source`` (see ``atlas_db.schema_grammar.meta_grams_cte``) to the running counts."""
    cte = meta_grams_cte(source)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _gt_mc AS WITH {cte}
                    SELECT kinds, {sign} * count(*) AS n, {sign} * count(DISTINCT piece_id) AS np
                    FROM grams GROUP BY kinds""")
    con.execute("""UPDATE meta_pattern_counts m SET count = m.count + d.n, n_pieces = m.n_pieces + d.np
                   FROM _gt_mc d WHERE m.kinds = d.kinds""")
    con.execute("""INSERT INTO meta_pattern_counts SELECT kinds, n, np FROM _gt_mc d
                   WHERE NOT EXISTS (SELECT 1 FROM meta_pattern_counts m WHERE m.kinds = d.kinds)""")
    con.execute(f"""INSERT INTO meta_step_counts WITH {cte} SELECT t, {sign} * count(*) FROM s GROUP BY t
                    ON CONFLICT (kind) DO UPDATE SET count = count + excluded.count""")
    con.execute("DROP TABLE _gt_mc")
    if sign < 0:
        con.execute("DELETE FROM meta_pattern_counts WHERE count = 0")
        con.execute("DELETE FROM meta_step_counts WHERE count = 0")


def meta_patterns(con, version: str) -> int:
    """Recurring sequences of transposition steps between successive occurrences of the
    same rule along a track, from the running counts (``add_meta_counts``)."""
    con.execute("DELETE FROM meta_patterns")
    con.execute(f"""
        INSERT INTO meta_patterns
        WITH c AS (SELECT kinds, count AS n, n_pieces AS np FROM meta_pattern_counts
                   WHERE count >= 3 AND n_pieces >= 2),
        alphabet AS (SELECT greatest(count(*), 2) AS a FROM meta_step_counts WHERE count > 0)
        SELECT row_number() OVER (ORDER BY (n - 1) * len(kinds) * log2(a) DESC, kinds),
               kinds, len(kinds), n, np, (n - 1) * len(kinds) * log2(a) - len(kinds) * log2(a),
               '{version}'
        FROM c, alphabet""")
    return con.execute("SELECT count(*) FROM meta_patterns").fetchall()[0][0]


def refresh_corpus_level(con, version: str, *, new_from: int | None = None, grammar=None) -> None:
    """Rule transforms (searched for the rules from ``new_from`` on; all if None), corpus
    choices and meta-patterns (see :func:`rule_transforms` for ``grammar``)."""
    rule_transforms(con, version, new_from=new_from, grammar=grammar)
    interval_choices(con, version)
    meta_patterns(con, version)
