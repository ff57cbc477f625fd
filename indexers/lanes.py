"""Smith-Waterman over many references at once, one reference per SIMD lane.

``indexers.align``'s score kernels align one reference after the other: each cell of the
dynamic programme waits for its left neighbour, so a core does one or two cells at a
time. Here several references (the lanes) advance together, one column each per step;
a lane whose reference ends takes the next one (longest first, so that few lanes idle
at the end). The cells of one row are then independent scalar expressions, one per
lane, over neighbouring memory, which LLVM's SLP vectorizer turns into vector
instructions.

numba cannot express that row as a loop the loop vectorizer takes (it checks at run
time, for every row, that the arrays do not overlap, which costs more than the row), so
the row is written out lane by lane: this module generates that source (one reference
column for every lane) and compiles it in this file's name, so that numba caches it
like any other kernel, with the SLP vectorizer on for these functions only (numba turns
it off by default because of LLVM miscompilations; tests/test_align_lanes.py checks
every kernel here against the one-reference-at-a-time region kernels of
``indexers.align``, which compute the same recurrences, or the recurrence written out).
The drivers call the generated kernels as this module's globals, which ``_ready``
defines on first use.

Replaying the cover search's calls against the one-at-a-time kernels these replaced
(docs/covers-history.md, "Lanes"): melody and pitch-class scores the same to the bit, 3.3x and
3.5x faster; chroma scores the same but for the last bits of 1 in ~470 (its frame
scores are float32 sums), 1.8-1.9x faster.
"""

from __future__ import annotations

import contextlib
import threading

import numba
import numpy as np
from numba import njit

__all__ = ["SYMBOL_LANES", "CHROMA_LANES", "sym_scores", "chroma_scores", "pitch_class_scores"]


def _has_avx512() -> bool:
    """Whether numba compiles for a CPU with AVX-512: its NUMBA_CPU_FEATURES where set
    (NUMBA_CPU_NAME=generic sets none), else the host's as numba reads them (with
    NUMBA_ENABLE_AVX=0 none; '' where LLVM cannot read them)."""
    features = numba.config.CPU_FEATURES
    if features is None:
        from numba.core.codegen import get_host_cpu_features

        features = get_host_cpu_features()
    return "+avx512f" in features.split(",")


# lanes per kernel. The melody and pitch-class kernels: 16 (one AVX-512 register of
# float32) where the CPU has AVX-512, else 8 (one AVX2 register; 16 lanes there are two
# registers' work at every step, the idle lanes' too). Replaying the cover
# search's calls, 16 were the faster in the session that wrote these kernels (0.85 s
# against 1.09 s for 8; its CPU was not recorded, an earlier session's had AVX-512), 8 on
# an AMD EPYC with AVX2 only (0.93 s against 1.40 s for 16 and 1.05 s for 4;
# docs/covers-history.md, "Lanes"). The chroma kernel: 8 on both (its many small
# calls: 94 us against 150-170 us with 8-15 pairs there; 4 lanes 15% slower on AVX2)
SYMBOL_LANES = 16 if _has_avx512() else 8
CHROMA_LANES = 8
_NONE = np.float32(-1.0)  # the symbol of a lane with no reference: matches nothing
_FAR = np.float32(1e9)  # the merge cost where no merge is possible (as in indexers.align)


@contextlib.contextmanager
def _slp():
    """numba's SLP vectorizer on while the block compiles (numba >= 0.57 reads the flag
    for each compilation; without it the kernels are the same, only slower)."""
    before = getattr(numba.config, "SLP_VECTORIZE", 0)
    numba.config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        numba.config.SLP_VECTORIZE = before


def _compile(name: str, source, signature: str, n_lanes: int, **options):
    """Define ``name`` from the source ``source(n_lanes)`` writes, in this module, and
    compile it (cached)."""
    exec(compile(source(n_lanes), __file__, "exec"), globals())
    with _slp():
        return njit(signature, cache=True, nogil=True, **options)(globals()[name])


# kernel name -> (_compile's arguments, its options); compiled on first use (_ready)
_KERNELS: dict[str, tuple] = {}
_loaded = threading.Event()
_loading = threading.Lock()


def _ready() -> None:
    """Compile (or load from numba's cache) the column kernels the drivers call, on the
    first use in this process rather than at import: loading them costs ~0.45 s, which a
    command that imports the cover search without aligning (``atlas similar``) would
    pay for nothing. The drivers find them as this module's globals when numba compiles
    them, after this."""
    if _loaded.is_set():
        return
    with _loading:
        if not _loaded.is_set():
            for name, (args, options) in _KERNELS.items():
                globals()[name] = _compile(*args, **options)
            _loaded.set()


def _each(fmt: str, n_lanes: int) -> list[str]:
    """``fmt`` written out once per lane (``{l}``: the lane)."""
    return [fmt.format(l=l) for l in range(n_lanes)]


def _two_column_row(n_lanes: int, cell: str) -> list[str]:
    """The rest of a row of the two-column kernels: each lane's cell ``v`` = ``cell``
    (from ``w``, the cell above in the previous column, ``d`` the one before it, ``e``
    the left neighbour), stored, ``w`` carried as the next row's ``d`` and ``v`` as its
    ``e``; after the last row, the lanes' best scores stored."""
    return (_each("        w{l} = u[{l}]", n_lanes)
            + _each("        v{l} = " + cell, n_lanes)
            + _each("        h[{l}] = v{l}", n_lanes)
            + _each("        d{l} = w{l}; e{l} = v{l}; b{l} = max(b{l}, v{l})", n_lanes)
            + _each("    b[{l}] = b{l}", n_lanes))


def _sym_column_source(n_lanes: int) -> str:
    """One reference column of :func:`sym_scores` for every lane.

    lane rows: 0 the reference symbol, 1 its sum with the previous one (mod 12), 2 the
    cost of that merge, 3 the best score so far (updated). The recurrence is
    ``indexers.align.sw_symbols``' (without the regions), term for term."""
    def each(fmt: str) -> list[str]:
        return _each(fmt, n_lanes)

    body = ["def _sym_column(A0, A1, A2, lane, qf, qs2, n, match, nmis, mm, xm, gap):",
            "    z = np.float32(0.0)",
            "    r = lane[0]", "    s = lane[1]", "    m = lane[2]", "    b = lane[3]"]
    body += each("    r{l} = r[{l}]; s{l} = s[{l}]; m{l} = m[{l}]; b{l} = b[{l}]")
    # row 1: no merged query interval yet
    body += ["    q1 = qf[1]", "    a0 = A0[1]", "    u = A1[1]", "    d = A1[0]", "    e = A2[0]"]
    body += each("    v{l} = max(max(d[{l}] + (match if r{l} == q1 else nmis), u[{l}] - gap, "
                 "e[{l}] + (match if s{l} == q1 else nmis) - m{l}, z), z - gap)")
    body += each("    a0[{l}] = v{l}")
    body += ["    u = A1[1]", "    d = A1[0]", "    e = A2[1]"]
    body += each("    p{l} = u[{l}]; pp{l} = d[{l}]; t{l} = e[{l}]; f{l} = v{l}; b{l} = max(b{l}, v{l})")
    # an unsigned row index: with a signed one, numba wraps a negative index around,
    # which LLVM could not rule out here (a third of the loop's instructions)
    body += ["    for i0 in range(2, n + 1):", "        i = np.uint64(i0)",
             "        qi = qf[i]", "        qm = qs2[i]",
             "        u = A1[i]", "        e = A2[i]", "        a0 = A0[i]"]
    body += each("        w{l} = u[{l}]")
    # up1 + profile, up - gap, up2 + merged query, reference merge, 0; the left one last
    body += each("        v{l} = max(max(p{l} + (match if r{l} == qi else nmis), w{l} - gap, "
                 "pp{l} + (mm if r{l} == qm else xm), t{l} + (match if s{l} == qi else nmis) - m{l}, z), "
                 "f{l} - gap)")
    body += each("        a0[{l}] = v{l}")
    body += each("        pp{l} = p{l}; p{l} = w{l}; t{l} = e[{l}]; f{l} = v{l}; b{l} = max(b{l}, v{l})")
    body += each("    b[{l}] = b{l}")
    return "\n".join(body) + "\n"


_KERNELS["_sym_column_kernel"] = (
    ("_sym_column", _sym_column_source,
     "void(float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[::1], float32[::1], "
     "int64, float32, float32, float32, float32, float32)", SYMBOL_LANES), {})


@njit(cache=True, nogil=True)
def _turn(l, ref, col, lens, order, nxt):
    """Lane ``l`` before a step: when its reference is done, free it; when it is free,
    give it the next reference in ``order`` from position ``nxt`` on that is not empty
    (an empty one scores 0, as when aligned alone), from its column 0. Returns (the
    reference just done or -1, whether the lane starts a new one, the next ``nxt``);
    the caller stores the result and clears the lane's state. The drivers call it only
    when the lane is free or done: called for every lane at every step, it doubled the
    melody kernel's time (each call passes its arrays' reference counts)."""
    done = -1
    c = ref[l]
    if c >= 0 and col[l] >= lens[c]:
        done = c
        ref[l] = -1
    fresh = False
    if ref[l] < 0:
        while nxt < order.size and lens[order[nxt]] <= 0:
            nxt += 1
        if nxt < order.size:
            ref[l] = order[nxt]
            col[l] = 0
            fresh = True
            nxt += 1
    return done, fresh, nxt


@njit(cache=True, nogil=True)
def _sym_scores(q, refs, starts, ends, match, mismatch, gap, merge):
    n = q.size
    k = starts.size
    L = SYMBOL_LANES
    scores = np.zeros(k, np.float32)
    end = np.full(k, -1, np.int64)
    nmis = -mismatch
    mm = match - merge
    xm = -mismatch - merge
    # the query's symbol at each row and its merged pair with the row before; 0 (no
    # interval) matches nothing, as in indexers.align's profiles
    qf = np.full(n + 1, np.float32(-2.0), np.float32)
    qs2 = np.full(n + 1, np.float32(-2.0), np.float32)
    for i in range(1, n + 1):
        if q[i - 1] != 0:
            qf[i] = np.float32(q[i - 1])
        if i >= 2 and (q[i - 2] + q[i - 1]) % 12 != 0:
            qs2[i] = np.float32((q[i - 2] + q[i - 1]) % 12)
    lens = ends - starts
    order = np.argsort(-lens, kind="mergesort")
    A0 = np.zeros((n + 1, L), np.float32)
    A1 = np.zeros((n + 1, L), np.float32)
    A2 = np.zeros((n + 1, L), np.float32)
    lane = np.zeros((4, L), np.float32)
    ref = np.full(L, -1, np.int64)  # the reference in each lane (-1: none)
    col = np.zeros(L, np.int64)  # the lane's next column
    prev = np.full(L, -1, np.int64)
    last = np.full(L, -1, np.int64)  # the first column of the best score
    old = np.zeros(L, np.float32)
    nxt = 0
    while True:
        busy = 0
        for l in range(L):
            if ref[l] < 0 or col[l] >= lens[ref[l]]:  # free, or its reference done
                done, fresh, nxt = _turn(l, ref, col, lens, order, nxt)
                if done >= 0:
                    scores[done] = lane[3, l]
                    end[done] = last[l]
                if fresh:
                    prev[l] = -1
                    last[l] = -1
                    lane[3, l] = 0.0
                    for i in range(n + 1):
                        A1[i, l] = 0.0
                        A2[i, l] = 0.0
            c = ref[l]
            if c >= 0:
                busy += 1
                x = refs[starts[c] + col[l]]
                lane[0, l] = np.float32(x)
                if prev[l] >= 0:
                    lane[1, l] = np.float32((prev[l] + x) % 12)
                    lane[2, l] = merge
                else:
                    lane[1, l] = _NONE
                    lane[2, l] = _FAR
                prev[l] = x
            else:
                lane[0, l] = _NONE
                lane[1, l] = _NONE
                lane[2, l] = _FAR
            old[l] = lane[3, l]
        if busy == 0:
            break
        _sym_column_kernel(A0, A1, A2, lane, qf, qs2, n, match, nmis, mm, xm, gap)
        for l in range(L):
            if ref[l] >= 0:
                if lane[3, l] > old[l]:
                    last[l] = col[l]
                col[l] += 1
        A2, A1, A0 = A1, A0, A2
    return scores, end


def sym_scores(q, refs, starts, ends, match, mismatch, gap, merge):
    """``indexers.align.sw_symbols``' scores, ``SYMBOL_LANES`` references at a time, and per
    reference the first position where its best score is reached (-1: none above 0;
    where ``sw_symbols``' region ends).

    q : int8 [shape=(n,)]; refs : int8 [shape=(M,)]; starts, ends : int64 [shape=(k,)];
    match, mismatch, gap, merge : float32. Returns (float32 [k], int64 [k])."""
    _ready()
    if q.size == 0:
        return np.zeros(starts.size, np.float32), np.full(starts.size, -1, np.int64)
    return _sym_scores(q, refs, starts, ends, match, mismatch, gap, merge)


def _chroma_column_source(n_lanes: int) -> str:
    """One reference frame (column) of :func:`chroma_scores` for every lane.

    QL[i, p, l]: query frame i as lane l's transposition sees it (p < 12), and 1 at
    p = 12 where the query frame is silent; F[p, l]: lane l's reference frame (all 0
    for a lane with no reference: silent); S: room for the column's cosines (n rows);
    lane rows: 0 the score of a cell whose query frame is silent, 1 that of a cell
    whose reference frame is, 2 the best score so far (updated). The recurrence is
    ``indexers.align.sw_chroma``'s (without the regions), term for term.

    The cosines come first, in a loop of their own with the reference frame in
    registers: computed in the recurrence's loop, the 12 values of each lane's frame
    were loaded again for every row, and the kernel took 1.2-1.3x as long."""
    def each(fmt: str) -> list[str]:
        return _each(fmt, n_lanes)

    body = ["def _chroma_column(QL, F, S, H0, H1, lane, n, thr, g):",
            "    z = np.float32(0.0)"]
    body += [f"    x{p} = F[{p}]" for p in range(12)]
    body += each("    " + "; ".join(f"x{p}_{{l}} = x{p}[{{l}}]" for p in range(12)))
    body += ["    qv = lane[0]", "    ov = lane[1]", "    b = lane[2]"]
    body += each("    qv{l} = qv[{l}]; ov{l} = ov[{l}]; b{l} = b[{l}]; d{l} = z; e{l} = z")
    body += each("    t{l} = " + " + ".join(f"x{p}_{{l}}" for p in range(12)))
    body += ["    for i in range(n):",
             "        Q = QL[i]", "        c = S[i]"]
    body += [f"        y{p} = Q[{p}]" for p in range(12)]
    # the cosine as BLAS sums it: one product, then one fused multiply-add per pitch
    # class (the select of the silent frames is in the loop below: with it here,
    # numba's SLP vectorizer left this loop scalar)
    body += each("        a{l} = y0[{l}] * x0_{l}")
    for p in range(1, 12):
        body += each(f"        a{{l}} = a{{l}} + y{p}[{{l}}] * x{p}_{{l}}")
    body += each("        c[{l}] = a{l}")
    body += ["    for i in range(1, n + 1):",
             "        Q = QL[i - 1]", "        y12 = Q[12]", "        c = S[i - 1]", "        u = H1[i]",
             "        h = H0[i]"]
    body += each("        a{l} = c[{l}]")
    body += each("        s{l} = qv{l} if y12[{l}] > z else (ov{l} if t{l} <= z else a{l} - thr)")
    body += _two_column_row(n_lanes, "max(max(d{l} + s{l}, w{l} - g, z), e{l} - g)")
    return "\n".join(body) + "\n"


_KERNELS["_chroma_column_kernel"] = (
    ("_chroma_column", _chroma_column_source,
     "void(float32[:, :, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1], "
     "int64, float32, float32)", CHROMA_LANES), {"fastmath": {"contract"}})  # contract: the fused multiply-adds

_FAR_BELOW = np.float32(-1e30)  # a lane with no reference: no cell of it can score
_BLOCK = 16  # columns whose reference frames are laid out for the lanes at once


@njit(cache=True, nogil=True)
def _chroma_scores(qs, shifts, refs, starts, ends, threshold, silent, gap):
    n = qs.shape[1]
    k = starts.size
    L = CHROMA_LANES
    scores = np.zeros(k, np.float32)
    best_shift = np.zeros(k, np.int32)
    thr = np.float32(threshold)
    sil = np.float32(-silent)
    g = np.float32(gap)
    # the (reference, transposition) pairs, in the order the one-at-a-time kernel tries
    # them (its first best transposition wins a tie), aligned longest first
    task_ref = np.empty(k * shifts.shape[1], np.int64)
    task_shift = np.empty_like(task_ref)
    n_tasks = 0
    for c in range(k):
        for si in range(shifts.shape[1]):
            if shifts[c, si] >= 0:
                task_ref[n_tasks] = c
                task_shift[n_tasks] = shifts[c, si]
                n_tasks += 1
    task_ref = task_ref[:n_tasks]
    task_shift = task_shift[:n_tasks]
    task_len = ends[task_ref] - starts[task_ref]  # an empty reference scores 0
    order = np.argsort(-task_len, kind="mergesort")
    task_best = np.zeros(n_tasks, np.float32)
    QL = np.zeros((n, 13, L), np.float32)
    for i in range(n):
        tot = 0.0
        for p in range(12):
            tot += qs[0, i, p]
        if tot <= 0.0:
            QL[i, 12, :] = 1.0
    H0 = np.zeros((n + 1, L), np.float32)
    H1 = np.zeros((n + 1, L), np.float32)
    S = np.zeros((n, L), np.float32)  # a column's cosines
    lane = np.zeros((3, L), np.float32)
    F = np.zeros((_BLOCK, 12, L), np.float32)
    task = np.full(L, -1, np.int64)
    col = np.zeros(L, np.int64)
    nxt = 0
    while True:
        # free the lanes whose pair is done, give them the next pairs, and see how many
        # columns every busy lane still has (a block of at most _BLOCK)
        block = _BLOCK
        busy = 0
        for l in range(L):
            if task[l] < 0 or col[l] >= task_len[task[l]]:  # free, or its pair done
                done, fresh, nxt = _turn(l, task, col, task_len, order, nxt)
                if done >= 0:
                    task_best[done] = lane[2, l]
                if fresh:
                    lane[0, l] = sil
                    lane[1, l] = sil
                    lane[2, l] = 0.0
                    t = task_shift[task[l]]
                    for i in range(n):
                        for p in range(12):
                            QL[i, p, l] = qs[t, i, p]
                    for i in range(n + 1):
                        H1[i, l] = 0.0
            x = task[l]
            if x >= 0:
                busy += 1
                block = min(block, task_len[x] - col[l])
            else:
                lane[0, l] = _FAR_BELOW
                lane[1, l] = _FAR_BELOW
        if busy == 0:
            break
        for l in range(L):
            x = task[l]
            if x >= 0:
                a = starts[task_ref[x]] + col[l]
                for jj in range(block):
                    for p in range(12):
                        F[jj, p, l] = refs[a + jj, p]
                col[l] += block
            else:
                for jj in range(block):
                    for p in range(12):
                        F[jj, p, l] = 0.0
        for jj in range(block):
            _chroma_column_kernel(QL, F[jj], S, H0, H1, lane, n, thr, g)
            H0, H1 = H1, H0
    for x in range(n_tasks):
        c = task_ref[x]
        if task_best[x] > scores[c]:
            scores[c] = task_best[x]
            best_shift[c] = task_shift[x]
    return scores, best_shift


def chroma_scores(qs, shifts, refs, starts, ends, threshold, silent, gap):
    """``indexers.align.sw_chroma``'s best score and transposition per reference (the
    first of the best, in ``shifts``' order), ``CHROMA_LANES`` (reference, transposition) pairs
    at a time. The frame scores are float32 sums (a product, then fused multiply-adds),
    where ``sw_chroma``'s are float64: a score may differ from its in the last bits.

    qs : float32 [shape=(12, n, 12)]; shifts : int64 [shape=(k, s)] (-1: none);
    refs : float32 [shape=(M, 12)]; starts, ends : int64 [shape=(k,)]; threshold,
    silent, gap : float. Returns (float32 [k], int32 [k])."""
    _ready()
    if qs.shape[1] == 0:
        return np.zeros(starts.size, np.float32), np.zeros(starts.size, np.int32)
    return _chroma_scores(qs, shifts, refs, starts, ends, threshold, silent, gap)


def _pc_column_source(n_lanes: int) -> str:
    """One reference note (column) of :func:`pitch_class_scores` for every lane.

    lane rows: 0 the query pitch class that matches the lane's reference note (its
    pitch class less the lane's shift; -1: none), 1 the best score so far (updated).
    The recurrence is ``_sw_pitch_classes_score``'s of ``indexers.align`` before this
    module, term for term: match or leave the reference note out, then query notes left
    out as a running max down the column."""
    def each(fmt: str) -> list[str]:
        return _each(fmt, n_lanes)

    body = ["def _pc_column(H0, H1, lane, qf, n, match, nmis, gq, gr):",
            "    z = np.float32(0.0)", "    x = lane[0]", "    b = lane[1]"]
    body += each("    x{l} = x[{l}]; b{l} = b[{l}]; e{l} = z")
    body += ["    d = H1[0]"]
    body += each("    d{l} = d[{l}]")
    body += ["    for i in range(1, n + 1):", "        qi = qf[i]", "        u = H1[i]", "        h = H0[i]"]
    body += _two_column_row(n_lanes, "max(max(max(d{l} + (match if x{l} == qi else nmis), w{l} - gr), z), e{l} - gq)")
    return "\n".join(body) + "\n"


_KERNELS["_pc_column_kernel"] = (
    ("_pc_column", _pc_column_source,
     "void(float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[::1], int64, float32, float32, float32, float32)",
     SYMBOL_LANES), {})


@njit(cache=True, nogil=True)
def _pitch_class_scores(q, refs, starts, ends, shifts, match, nmis, gq, gr):
    n = q.size
    k = starts.size
    L = SYMBOL_LANES
    out = np.zeros(k, np.float32)
    qf = np.zeros(n + 1, np.float32)
    for i in range(1, n + 1):
        qf[i] = np.float32(q[i - 1] % 12)
    lens = ends - starts
    order = np.argsort(-lens, kind="mergesort")
    H0 = np.zeros((n + 1, L), np.float32)
    H1 = np.zeros((n + 1, L), np.float32)
    lane = np.zeros((2, L), np.float32)
    ref = np.full(L, -1, np.int64)
    col = np.zeros(L, np.int64)
    nxt = 0
    while True:
        busy = 0
        for l in range(L):
            if ref[l] < 0 or col[l] >= lens[ref[l]]:  # free, or its reference done
                done, fresh, nxt = _turn(l, ref, col, lens, order, nxt)
                if done >= 0:
                    out[done] = lane[1, l]
                if fresh:
                    lane[1, l] = 0.0
                    for i in range(n + 1):
                        H1[i, l] = 0.0
            c = ref[l]
            if c >= 0:
                busy += 1
                x = refs[starts[c] + col[l]]
                # (q + shift) % 12 == x, as q % 12 == (x - shift) % 12; x outside 0..11 never
                lane[0, l] = np.float32((x - shifts[c]) % 12) if 0 <= x < 12 else _NONE
                col[l] += 1
            else:
                lane[0, l] = _NONE
        if busy == 0:
            break
        _pc_column_kernel(H0, H1, lane, qf, n, match, nmis, gq, gr)
        H0, H1 = H1, H0
    return out


def pitch_class_scores(q, refs, starts, ends, shifts, match, mismatch, gap_q, gap_r):
    """``indexers.align.sw_pitch_classes_score``'s scores, ``SYMBOL_LANES`` references at
    a time (the same to the bit as the one-reference-at-a-time kernel it replaced).

    q : int [shape=(n,)] pitch classes; refs : int [shape=(M,)] pitch classes; starts,
    ends, shifts : int64 [shape=(k,)]; match, mismatch, gap_q, gap_r : float.
    Returns float32 [k]."""
    _ready()
    if q.size == 0:
        return np.zeros(starts.size, np.float32)
    return _pitch_class_scores(q, refs, starts, ends, shifts, np.float32(match), -np.float32(mismatch),
                               np.float32(gap_q), np.float32(gap_r))
