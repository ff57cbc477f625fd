"""Pitch-agnostic Re-Pair grammar: the numeric core (NumPy arrays in, NumPy arrays out).

A track is a sequence of notes in *grammar order* (onset ticks, then pitch, then the
file's note order). Each note becomes a terminal ``rhythm_bucket * 8 + velocity_bucket``
(128 terminals) that carries no absolute pitch:

- ``rhythm_bucket`` (0-15): the inter-onset interval to the next note of the track, in
  beats, snapped to the nearest of :data:`RHYTHM_NOMINAL_BEATS` (in log scale; 0 means
  "together with the next note", i.e. under 1/16 beat); the last note of a track uses its
  own duration;
- ``velocity_bucket`` (0-7): ``velocity // 16``.

Re-Pair (Larsson & Moffat) replaces frequent adjacent pairs by new symbols. A pair's
identity is ``(left symbol, right symbol, connector interval)`` where the connector is the
pitch interval in semitones from the last note of the left half to the first note of the
right half; so a rule is a pure contour and every transposition of it is the same rule.

Speed: each *round* counts all pairs at once (int64 keys, ``np.unique``), takes every pair
whose count is at least ``ROUND_RATIO`` times the round's best (a batch of rules per round
instead of one), resolves overlaps with one compiled left-to-right greedy pass (a position
yields to its right neighbour only if that neighbour's pair ranks higher), drops pairs left
with fewer than ``min_count`` replaceable occurrences and repeats the pass until stable,
then rewrites the sequence with NumPy. Rules of a round get ids in rank order (count
descending, key ascending), so a build is deterministic.

Replay: the same greedy pass applied round by round with the stored rules reproduces a
build's parse exactly on the build's own input, and parses any new sequence with the
existing rules (``replay``). That is how new pieces are encoded incrementally.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

__all__ = [
    "RHYTHM_NOMINAL_BEATS",
    "N_TERMINALS",
    "rhythm_bucket",
    "velocity_bucket",
    "grammar_order",
    "terminals",
    "Grammar",
    "Sequence",
    "initial_sequence",
    "build",
    "replay",
    "rule_lengths",
    "rule_spans",
    "rule_depths",
    "rule_contours",
    "expand",
    "expand_by_rule",
    "decode",
]

N_TERMINALS = 128
ROUND_RATIO = 0.1
# Nominal inter-onset intervals of the 16 rhythm buckets, in beats (quarter notes).
RHYTHM_NOMINAL_BEATS = np.array(
    [0, 1 / 8, 1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4, 1, 4 / 3, 3 / 2, 2, 3, 4, 6, 8], np.float64
)
_EDGES = np.concatenate([[1 / 16], np.sqrt(RHYTHM_NOMINAL_BEATS[1:-1] * RHYTHM_NOMINAL_BEATS[2:])])
_KEY_SYM = np.int64(1) << 24  # symbols (terminals + rules) must stay below 2**24


def rhythm_bucket(ioi_beats: np.ndarray) -> np.ndarray:
    """Bucket 0-15 of inter-onset intervals in beats: ``rhythm_bucket([0, 0.5, 1, 9])``
    is ``[0, 5, 8, 15]``."""
    return np.searchsorted(_EDGES, np.asarray(ioi_beats, np.float64), side="right").astype(np.int8)


def velocity_bucket(velocity: np.ndarray) -> np.ndarray:
    """Bucket 0-7 of MIDI velocities (``velocity // 16``)."""
    return (np.clip(np.asarray(velocity, np.int64), 0, 127) >> 4).astype(np.int8)


def grammar_order(track: np.ndarray, onset_ticks: np.ndarray, pitch: np.ndarray,
                  note_index: np.ndarray) -> np.ndarray:
    """Permutation putting notes in grammar order: by track, onset, pitch, note_index."""
    return np.lexsort((note_index, pitch, onset_ticks, track))


def terminals(onset_ticks, duration_ticks, velocity, ticks_per_beat, track_starts):
    """Terminal symbol, rhythm bucket and velocity bucket of every note.

    Parameters
    ----------
    onset_ticks, duration_ticks, velocity : np.ndarray [shape=(n,)]
        notes in grammar order, tracks one after another.
    ticks_per_beat : np.ndarray [shape=(n,)] or int
    track_starts : np.ndarray [shape=(t+1,)]
        offsets of each track's first note, then ``n``.
    """
    onset = np.asarray(onset_ticks, np.int64)
    n = len(onset)
    nxt = np.empty(n, np.int64)
    nxt[:-1] = onset[1:] - onset[:-1]
    last = np.asarray(track_starts[1:], np.int64) - 1
    last = last[last >= 0]
    nxt[last] = np.asarray(duration_ticks, np.int64)[last] if n else nxt[last]
    rb = rhythm_bucket(nxt / np.asarray(ticks_per_beat, np.float64))
    vb = velocity_bucket(velocity)
    return (rb.astype(np.int64) * 8 + vb).astype(np.int64), rb, vb, nxt


@dataclass
class Grammar:
    """Rules ``N_TERMINALS + k`` for k = 0..n-1: ``left[k] right[k]`` joined by ``conn[k]``
    semitones, learned in round ``round[k]``."""

    left: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    right: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    conn: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    round: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    @property
    def n_rules(self) -> int:
        return len(self.left)

    def keys(self) -> np.ndarray:
        return _pair_key(self.left, self.right, self.conn)

    def extend(self, left, right, conn, rnd) -> None:
        self.left = np.concatenate([self.left, left]).astype(np.int64)
        self.right = np.concatenate([self.right, right]).astype(np.int64)
        self.conn = np.concatenate([self.conn, conn]).astype(np.int64)
        self.round = np.concatenate([self.round, rnd]).astype(np.int64)


@dataclass
class Sequence:
    """The current parse: one entry per symbol, tracks one after another.

    sym: symbol id; start: position of its first note in the note arrays; first/last:
    pitch of its first/last note; brk: True where the next entry belongs to another track.
    """

    sym: np.ndarray
    start: np.ndarray
    first: np.ndarray
    last: np.ndarray
    brk: np.ndarray

    def __len__(self):
        return len(self.sym)


def initial_sequence(term: np.ndarray, pitch: np.ndarray, track_starts: np.ndarray) -> Sequence:
    n = len(term)
    brk = np.zeros(n, np.bool_)
    ends = np.asarray(track_starts[1:], np.int64) - 1
    brk[ends[ends >= 0]] = True
    p = np.asarray(pitch, np.int64)
    return Sequence(np.asarray(term, np.int64), np.arange(n, dtype=np.int64), p.copy(), p.copy(), brk)


def _in_sorted(x: np.ndarray, sorted_ref: np.ndarray) -> np.ndarray:
    """Membership of each x in a sorted array."""
    if not len(sorted_ref) or not len(x):
        return np.zeros(len(x), np.bool_)
    o = np.argsort(x, kind="stable")
    j = np.minimum(np.searchsorted(sorted_ref, x[o]), len(sorted_ref) - 1)
    out = np.empty(len(x), np.bool_)
    out[o] = sorted_ref[j] == x[o]
    return out


def _pair_key(a, b, conn):
    return (np.asarray(a, np.int64) * _KEY_SYM + np.asarray(b, np.int64)) * 256 + (np.asarray(conn, np.int64) + 128)


def _seq_keys(seq: Sequence) -> np.ndarray:
    """Key of the pair starting at each position (-1 where a track ends)."""
    n = len(seq)
    if n < 2:
        return np.full(max(n - 1, 0), -1, np.int64)
    return _seq_keys_nb(seq.sym, seq.first, seq.last, seq.brk)


@njit(cache=True, nogil=True)
def _seq_keys_nb(sym, first, last, brk):
    n = len(sym) - 1
    out = np.empty(n, np.int64)
    for i in range(n):
        if brk[i]:
            out[i] = -1
        else:
            out[i] = (sym[i] * np.int64(1 << 24) + sym[i + 1]) * 256 + (first[i + 1] - last[i] + 128)
    return out


@njit(cache=True, nogil=True)
def _count_pairs_nb(keys, size_hint):
    """Hash-count keys >= 0 with a table of about 2 * size_hint slots (small enough to
    stay in cache: a round has far fewer distinct pairs than positions). Returns (slot of
    each position or -1, unique keys in order of first appearance, counts, ok); ok is
    False when more than size_hint distinct keys turned up (the caller retries larger)."""
    n = len(keys)
    size = 16
    while size < 2 * size_hint + 2:
        size *= 2
    mask = size - 1
    table = np.full(size, -1, np.int64)  # slot of the key hashed here
    cap = size // 2
    inv = np.full(n, -1, np.int64)
    uk = np.empty(cap, np.int64)
    cnt = np.zeros(cap, np.int64)
    m = 0
    for i in range(n):
        k = keys[i]
        if k < 0:
            continue
        h = ((k * np.int64(-7046029254386353131)) >> np.int64(17)) & mask
        while True:
            s = table[h]
            if s == -1:
                if m == cap:
                    return inv, uk[:0].copy(), cnt[:0].copy(), False
                table[h] = m
                uk[m] = k
                s = m
                m += 1
                break
            if uk[s] == k:
                break
            h = (h + 1) & mask
        cnt[s] += 1
        inv[i] = s
    return inv, uk[:m].copy(), cnt[:m].copy(), True


def _count_pairs(keys, size_hint=None):
    """(slot of each position or -1, unique keys, counts) of the keys >= 0. O(n)."""
    hint = max(1024, len(keys) // 8) if size_hint is None else max(1024, int(size_hint))
    while True:
        inv, uk, cnt, ok = _count_pairs_nb(keys, hint)
        if ok:
            return inv, uk, cnt
        hint *= 4


@njit(cache=True, nogil=True)
def _ranks(inv, rank_of_u):
    out = np.empty(len(inv), np.int64)
    for i in range(len(inv)):
        out[i] = rank_of_u[inv[i]] if inv[i] >= 0 else -1
    return out


@njit(cache=True, nogil=True)
def _greedy(rank):
    """Left-to-right non-overlapping choice of pair positions; rank -1 = not a candidate,
    lower rank = better. A position yields to its right neighbour if that one ranks
    strictly better."""
    n = len(rank)
    take = np.zeros(n, np.bool_)
    i = 0
    while i < n:
        r = rank[i]
        if r < 0:
            i += 1
            continue
        if i + 1 < n:
            r2 = rank[i + 1]
            if r2 >= 0 and r2 < r:
                i += 1
                continue
        take[i] = True
        i += 2
    return take


def _apply(seq: Sequence, take: np.ndarray, new_sym: np.ndarray) -> Sequence:
    """Replace the pairs starting at positions ``take`` by ``new_sym`` (one per taken pos)."""
    return Sequence(*_apply_nb(seq.sym, seq.start, seq.first, seq.last, seq.brk, take, new_sym))


@njit(cache=True, nogil=True)
def _apply_nb(sym, start, first, last, brk, take, new_sym):
    n = len(sym)
    m = n - len(new_sym)
    o_sym = np.empty(m, np.int64)
    o_start = np.empty(m, np.int64)
    o_first = np.empty(m, np.int64)
    o_last = np.empty(m, np.int64)
    o_brk = np.empty(m, np.bool_)
    i = 0
    j = 0
    k = 0
    while i < n:
        o_start[j] = start[i]
        o_first[j] = first[i]
        if i < len(take) and take[i]:
            o_sym[j] = new_sym[k]
            k += 1
            o_last[j] = last[i + 1]
            o_brk[j] = brk[i + 1]
            i += 2
        else:
            o_sym[j] = sym[i]
            o_last[j] = last[i]
            o_brk[j] = brk[i]
            i += 1
        j += 1
    return o_sym, o_start, o_first, o_last, o_brk


def _select(rank_of_pos: np.ndarray, n_cand: int, min_count: int):
    """Greedy choice, dropping candidates with fewer than min_count takes until stable.
    Returns (take [shape=(positions,)], takes per candidate, alive per candidate)."""
    return _select_nb(rank_of_pos, n_cand, min_count)


@njit(cache=True, nogil=True)
def _select_nb(rank_of_pos, n_cand, min_count):
    # compiled: as NumPy steps (greedy, bincount of the taken ranks, masks over every
    # position) each pass made several position-length temporaries
    rank = rank_of_pos.copy()
    alive = np.ones(n_cand, np.bool_)
    counts = np.zeros(n_cand, np.int64)
    while True:
        take = _greedy(rank)
        counts[:] = 0
        for i in range(len(rank)):
            if take[i]:
                counts[rank[i]] += 1
        weak = False
        for c in range(n_cand):
            if alive[c] and counts[c] < min_count:
                alive[c] = False
                weak = True
        if not weak:
            return take, counts, alive
        for i in range(len(rank)):
            r = rank[i]
            if r >= 0 and not alive[r]:
                rank[i] = -1


def build(seq: Sequence, grammar: Grammar | None = None, *, max_rules: int = 100_000,
          min_count: int = 2, max_rounds: int = 10_000, progress=None) -> tuple[Grammar, Sequence]:
    """Learn rules on ``seq`` (after any existing ``grammar``) until no pair occurs
    ``min_count`` times or ``max_rules`` rules exist. Returns (grammar, final sequence).

    A pair already defined in ``grammar`` (left over by the greedy pass of a replay) is
    never defined again.
    """
    min_count = max(2, int(min_count))
    max_rules = min(int(max_rules), int(_KEY_SYM) - N_TERMINALS)  # symbol ids fit the pair key
    g = grammar if grammar is not None else Grammar()
    known = np.sort(g.keys())
    rnd = int(g.round.max()) + 1 if g.n_rules else 0
    n_rules = g.n_rules  # rules so far, this build's included (added to g at the end:
    new_parts = []       # one concatenation, not one per round)
    n_unique = None
    for _ in range(max_rounds):
        budget = max_rules - n_rules
        if budget <= 0 or len(seq) < 2:
            break
        keys = _seq_keys(seq)
        inv, uk, cnt = _count_pairs(keys, None if n_unique is None else 2 * n_unique)
        n_unique = len(uk)
        if not len(uk):
            break
        top = int(cnt.max())
        if top < min_count:
            break
        thr = max(min_count, int(np.ceil(top * ROUND_RATIO)))
        take = None
        for t in (thr, min_count) if thr > min_count else (thr,):
            cand = np.flatnonzero(cnt >= t)
            if len(known):
                # a pair that is already a rule was left over by the greedy pass:
                # never define it twice (and keep replay exact)
                cand = cand[~_in_sorted(uk[cand], known)]
            # rank: count descending, then key ascending
            cand = cand[np.lexsort((uk[cand], -cnt[cand]))][:budget]
            rank_of_u = np.full(len(uk), -1, np.int64)
            rank_of_u[cand] = np.arange(len(cand))
            rank = _ranks(inv, rank_of_u)
            take, counts, alive = _select(rank, len(cand), min_count)
            if take.any():
                break
            # every candidate fell under min_count after overlaps: lower the threshold
        if take is None or not take.any():
            break
        ck = uk[cand[alive]]
        sym_of_rank = np.full(len(cand), -1, np.int64)
        sym_of_rank[alive] = N_TERMINALS + n_rules + np.arange(int(alive.sum()))
        conn = ck % 256 - 128
        ab = ck // 256
        new_parts.append((ab // _KEY_SYM, ab % _KEY_SYM, conn, np.full(len(ck), rnd)))
        n_rules += len(ck)
        cks = np.sort(ck)
        known = np.insert(known, np.searchsorted(known, cks), cks)
        seq = _apply(seq, take, sym_of_rank[rank[take]])
        rnd += 1
        if progress:
            progress(n_rules, len(seq))
    if new_parts:
        g.extend(*(np.concatenate(col) for col in zip(*new_parts)))
    return g, seq


def replay(seq: Sequence, grammar: Grammar) -> Sequence:
    """Parse ``seq`` with existing rules: each round's rules in the build's order and
    with the build's greedy pass. Exact: on a build's own input it gives the build's parse.

    Only rules that can occur are tried: those whose two children are symbols of
    ``seq`` or such rules themselves (one pass over the rules); the others never match,
    and dropping them keeps every round's order, so the parse is the same. Rounds with
    none of them are skipped: the work follows the new notes, not the corpus."""
    if grammar.n_rules == 0 or len(seq) < 2:
        return seq
    present = np.zeros(N_TERMINALS + grammar.n_rules, np.bool_)
    present[seq.sym] = True
    ids = np.flatnonzero(_reachable(present, grammar.left, grammar.right)[N_TERMINALS:])
    if not len(ids):
        return seq
    gkeys = _pair_key(grammar.left[ids], grammar.right[ids], grammar.conn[ids])
    rounds = grammar.round[ids]
    bounds = np.flatnonzero(np.diff(rounds)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(rounds)]])
    for s, e in zip(starts, ends):
        if len(seq) < 2:
            break
        keys = _seq_keys(seq)
        rk = gkeys[s:e]
        order = np.argsort(rk, kind="stable")
        sk = rk[order]
        idx = np.searchsorted(sk, keys)
        idx_c = np.minimum(idx, len(sk) - 1)
        hit = (keys >= 0) & (sk[idx_c] == keys)
        if not hit.any():
            continue
        rank = np.where(hit, order[idx_c], -1).astype(np.int64)  # rank = position in round = id order
        take = _greedy(rank)
        seq = _apply(seq, take, N_TERMINALS + ids[s + rank[take]])
    return seq


@njit(cache=True)
def _reachable(present, left, right):
    """``present`` extended to the rules both of whose children are present (children
    have smaller ids, so one pass in id order)."""
    for k in range(len(left)):
        present[128 + k] = present[128 + k] or (present[left[k]] and present[right[k]])
    return present


# ---- rule attributes -------------------------------------------------------------

def rule_lengths(g: Grammar) -> np.ndarray:
    """Notes per symbol, terminals included (index = symbol id)."""
    ln = np.ones(N_TERMINALS + g.n_rules, np.int64)
    _fill_sum(ln, g.left, g.right, np.zeros(g.n_rules, np.int64))
    return ln


def rule_spans(g: Grammar) -> np.ndarray:
    """Pitch of the last note minus pitch of the first note, per symbol."""
    sp = np.zeros(N_TERMINALS + g.n_rules, np.int64)
    _fill_sum(sp, g.left, g.right, g.conn)
    return sp


@njit(cache=True)
def _fill_sum(out, left, right, extra):
    for k in range(len(left)):
        out[128 + k] = out[left[k]] + out[right[k]] + extra[k]


@njit(cache=True)
def _fill_depth(out, left, right):
    for k in range(len(left)):
        out[128 + k] = max(out[left[k]], out[right[k]]) + 1


def rule_depths(g: Grammar) -> np.ndarray:
    d = np.zeros(N_TERMINALS + g.n_rules, np.int64)
    _fill_depth(d, g.left, g.right)
    return d


def rule_contours(g: Grammar, ids: np.ndarray):
    """(intervals, terminals) of each symbol in ``ids`` as flat arrays with offsets.

    Returns ``iv_values, iv_offsets, term_values, term_offsets`` (Arrow list layout):
    symbol ``ids[j]`` has intervals ``iv_values[iv_offsets[j]:iv_offsets[j+1]]``
    (length - 1 of them) and terminals ``term_values[term_offsets[j]:term_offsets[j+1]]``.
    Cost: the notes of the requested symbols when they are a small part of the grammar
    (one new piece's rules), else one pass over every rule.
    """
    ids = np.asarray(ids, np.int64)
    lengths = rule_lengths(g)
    ln = lengths[ids]
    out_t_off = np.concatenate([[0], np.cumsum(ln)]).astype(np.int64)
    out_i_off = np.concatenate([[0], np.cumsum(ln - 1)]).astype(np.int64)
    if 4 * int(out_t_off[-1]) < int(lengths.sum()):
        terms = np.empty(int(out_t_off[-1]), np.int64)
        ivs = np.empty(int(out_i_off[-1]), np.int64)
        _walk_contours(ids, g.left, g.right, g.conn, out_t_off, out_i_off, terms, ivs,
                       2 * int(rule_depths(g)[ids].max(initial=0)) + 2)
        return ivs, out_i_off, terms, out_t_off
    t_off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    i_off = np.concatenate([[0], np.cumsum(lengths - 1)]).astype(np.int64)
    terms = np.empty(int(t_off[-1]), np.int64)
    ivs = np.empty(int(i_off[-1]), np.int64)
    terms[:N_TERMINALS] = np.arange(N_TERMINALS)
    _fill_contours(g.left, g.right, g.conn, t_off, i_off, terms, ivs)
    if len(ids) and np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
        # consecutive symbols (a build's rules): their contours are one slice
        a, b = int(ids[0]), int(ids[-1]) + 1
        return ivs[i_off[a]:i_off[b]], out_i_off, terms[t_off[a]:t_off[b]], out_t_off
    return (_gather(ivs, i_off[ids], ln - 1, int(out_i_off[-1])), out_i_off,
            _gather(terms, t_off[ids], ln, int(out_t_off[-1])), out_t_off)


@njit(cache=True)
def _walk_contours(ids, left, right, conn, t_off, i_off, terms, ivs, stack_size):
    """In-order walk of each symbol's tree: leaves give the terminals, each inner node
    (between its two halves) the interval joining them."""
    stack = np.empty(stack_size, np.int64)  # symbol, or -(k + 1): emit conn[k]
    for j in range(len(ids)):
        top = 0
        stack[0] = ids[j]
        ti = t_off[j]
        ii = i_off[j]
        while top >= 0:
            s = stack[top]
            top -= 1
            if s < 0:
                ivs[ii] = conn[-s - 1]
                ii += 1
            elif s < 128:
                terms[ti] = s
                ti += 1
            else:
                k = s - 128
                stack[top + 1] = right[k]
                stack[top + 2] = -(k + 1)
                stack[top + 3] = left[k]
                top += 3


@njit(cache=True)
def _fill_contours(left, right, conn, t_off, i_off, terms, ivs):
    for k in range(len(left)):
        s = 128 + k
        a, b = left[k], right[k]
        la = t_off[a + 1] - t_off[a]
        lb = t_off[b + 1] - t_off[b]
        terms[t_off[s]:t_off[s] + la] = terms[t_off[a]:t_off[a] + la]
        terms[t_off[s] + la:t_off[s] + la + lb] = terms[t_off[b]:t_off[b] + lb]
        o = i_off[s]
        ivs[o:o + la - 1] = ivs[i_off[a]:i_off[a] + la - 1]
        ivs[o + la - 1] = conn[k]
        ivs[o + la:o + la + lb - 1] = ivs[i_off[b]:i_off[b] + lb - 1]


@njit(cache=True)
def _gather(values, starts, lens, total):
    out = np.empty(total, values.dtype)
    o = 0
    for j in range(len(starts)):
        out[o:o + lens[j]] = values[starts[j]:starts[j] + lens[j]]
        o += lens[j]
    return out


def decode_leaves(sym, start, first, g: Grammar):
    """Expand symbols down to terminals: (terminal, note position, pitch) per note."""
    lengths = rule_lengths(g)
    spans = rule_spans(g)
    out_s, out_p, out_f = [], [], []
    sym = np.asarray(sym, np.int64)
    start = np.asarray(start, np.int64)
    first = np.asarray(first, np.int64)
    while len(sym):
        is_t = sym < N_TERMINALS
        out_s.append(sym[is_t])
        out_p.append(start[is_t])
        out_f.append(first[is_t])
        r = ~is_t
        sym, start, first = sym[r], start[r], first[r]
        k = sym - N_TERMINALS
        L, R, C = g.left[k], g.right[k], g.conn[k]
        rstart = start + lengths[L]
        rfirst = first + spans[L] + C
        sym = np.concatenate([L, R])
        start = np.concatenate([start, rstart])
        first = np.concatenate([first, rfirst])
    return np.concatenate(out_s), np.concatenate(out_p), np.concatenate(out_f)


def expand(seq: Sequence, g: Grammar):
    """Every occurrence of every rule (nested ones included) in a parse.

    Returns arrays ``rule_id, start, first_pitch, top_level`` (one entry per occurrence;
    terminals are not listed). ``start`` indexes the note arrays the parse was built on.
    """
    lengths = rule_lengths(g)
    spans = rule_spans(g)
    out_r, out_s, out_f, out_t = [], [], [], []
    sym, start, first = seq.sym, seq.start, seq.first
    top = True
    while len(sym):
        r = sym >= N_TERMINALS
        sym, start, first = sym[r], start[r], first[r]
        if not len(sym):
            break
        out_r.append(sym)
        out_s.append(start)
        out_f.append(first)
        out_t.append(np.full(len(sym), top))
        top = False
        k = sym - N_TERMINALS
        L, R, C = g.left[k], g.right[k], g.conn[k]
        sym = np.concatenate([L, R])
        start = np.concatenate([start, start + lengths[L]])
        first = np.concatenate([first, first + spans[L] + C])
    if not out_r:
        e = np.empty(0, np.int64)
        return e, e, e, np.empty(0, np.bool_)
    return (np.concatenate(out_r), np.concatenate(out_s), np.concatenate(out_f),
            np.concatenate(out_t))


def expand_by_rule(seq: Sequence, g: Grammar):
    """:func:`expand`'s occurrences ordered by (rule_id, start), the order ``occurrences``
    is written in: the same four arrays.

    One depth-first walk of the parse counts each rule's occurrences, a second writes
    each at its place (a counting sort). The walk meets a rule's occurrences in start
    order (two occurrences of one rule never nest), so no sort is needed: for
    pop909-dev's 1.7M occurrences 0.14-0.16 s CPU against 0.27-0.36 s for :func:`expand`
    and an argsort."""
    if not g.n_rules or not len(seq):
        e = np.empty(0, np.int64)
        return e, e, e, np.empty(0, np.bool_)
    depth = int(rule_depths(g).max())
    return _expand_by_rule_nb(seq.sym, seq.start, seq.first, g.left, g.right, g.conn, rule_lengths(g),
                              rule_spans(g), depth + 2)


@njit(cache=True)
def _expand_by_rule_nb(sym, start, first, left, right, conn, lengths, spans, stack_size):
    n_sym = len(lengths)
    count = np.zeros(n_sym, np.int64)
    e = np.empty(0, np.int64)
    _walk_occurrences(sym, start, first, left, right, conn, lengths, spans, stack_size, count,
                      e, e, e, np.empty(0, np.bool_), False)
    total = 0
    for r in range(n_sym):  # count -> first slot of each rule
        c = count[r]
        count[r] = total
        total += c
    out_r = np.empty(total, np.int64)
    out_s = np.empty(total, np.int64)
    out_f = np.empty(total, np.int64)
    out_t = np.zeros(total, np.bool_)
    _walk_occurrences(sym, start, first, left, right, conn, lengths, spans, stack_size, count,
                      out_r, out_s, out_f, out_t, True)
    return out_r, out_s, out_f, out_t


@njit(cache=True)
def _walk_occurrences(sym, start, first, left, right, conn, lengths, spans, stack_size, slot,
                      out_r, out_s, out_f, out_t, fill):
    """Depth-first walk of every top-level rule of a parse, left half first: without
    ``fill``, counts each rule's occurrences into ``slot``; with it, writes each
    occurrence at ``slot[rule]`` and advances that slot."""
    s_sym = np.empty(stack_size, np.int64)
    s_start = np.empty(stack_size, np.int64)
    s_first = np.empty(stack_size, np.int64)
    for i in range(len(sym)):
        if sym[i] < 128:
            continue
        top = 0
        s_sym[0] = sym[i]
        s_start[0] = start[i]
        s_first[0] = first[i]
        root = True
        while top >= 0:
            x = s_sym[top]
            st = s_start[top]
            f = s_first[top]
            top -= 1
            if fill:
                j = slot[x]
                out_r[j] = x
                out_s[j] = st
                out_f[j] = f
                out_t[j] = root
            slot[x] += 1
            root = False
            k = x - 128
            a = left[k]
            b = right[k]
            # only rules go on the stack (terminals are not occurrences); the right half
            # under the left one: the left half is walked first
            if b >= 128:
                top += 1
                s_sym[top] = b
                s_start[top] = st + lengths[a]
                s_first[top] = f + spans[a] + conn[k]
            if a >= 128:
                top += 1
                s_sym[top] = a
                s_start[top] = st
                s_first[top] = f


def decode(sym: np.ndarray, first: np.ndarray, g: Grammar):
    """Notes of one parse (top-level symbols and the first pitch of each): returns
    (terminal, pitch) per note in order."""
    lengths = rule_lengths(g)
    ln = lengths[np.asarray(sym, np.int64)]
    start = np.concatenate([[0], np.cumsum(ln)[:-1]]).astype(np.int64)
    s, p, f = decode_leaves(sym, start, first, g)
    n = int(ln.sum())
    term = np.empty(n, np.int64)
    pitch = np.empty(n, np.int64)
    term[p] = s
    pitch[p] = f
    return term, pitch
