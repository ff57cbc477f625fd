"""Chord progression search: ``atlas progression "ii V I"`` or ``"Dm7 G7 Cmaj7"``.

Two kinds of query:

- **Roman numerals** (``"ii V I"``, ``"I V vi IV"``, ``"ii7 V7 Imaj7"``, ``"i VII VI V"``)
  are read relative to the local key stored with each chord (``chords.key_tonic_pc``,
  ``chords.key_mode``): degrees follow the key's scale (major, or natural minor), so in a
  minor key ``III`` is the relative major; ``b``/``#`` move a degree by a semitone.
- **Chord symbols** (``"Dm7 G7 Cmaj7"``, ``"C G Am F"``, or mir_eval labels
  ``"D:min7 G:7 C:maj7"``) are matched in any key: what must agree is the root interval
  between successive chords and each chord's quality.

Quality matching: a plain triad in the query (``ii``, ``V``, ``Dm``, ``G``) matches any
chord built on that triad (``ii`` matches D:min, D:min7, D:min6 in C major); a query chord
with an extension (``V7``, ``Dm7``, ``Cmaj7``) matches that quality only. ``exact=True``
makes triads exact too. A bass note (``C/E``) is accepted and ignored.

Matching is vectorised over every chord of the database at once (one read of the
``chords`` table), so a query over a large corpus takes milliseconds plus the read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from atlas_db.connection import reading
from atlas_db.errors import BadInputError, IndexTroubleError
from atlas_db.schema_harmony import QUALITIES
from ingest.harmony import SCALES, TRIAD_FAMILY, roman_numeral

__all__ = ["QueryChord", "parse_progression", "find_progression", "search_chords", "piece_chords"]

_NOTE = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_ROMAN = {"I": 0, "II": 1, "III": 2, "IV": 3, "V": 4, "VI": 5, "VII": 6}

# Chord-symbol suffix -> quality (longest suffixes are tried first).
_SYMBOL_QUALITY = {
    "": "maj", "maj": "maj", "M": "maj",
    "m": "min", "min": "min", "-": "min",
    "dim": "dim", "°": "dim", "o": "dim",
    "aug": "aug", "+": "aug",
    "sus2": "sus2", "sus4": "sus4", "sus": "sus4",
    "7": "7", "dom7": "7",
    "maj7": "maj7", "M7": "maj7", "Δ": "maj7", "Δ7": "maj7", "ma7": "maj7",
    "m7": "min7", "min7": "min7", "-7": "min7",
    "m7b5": "hdim7", "ø": "hdim7", "ø7": "hdim7", "hdim7": "hdim7", "min7b5": "hdim7",
    "dim7": "dim7", "°7": "dim7", "o7": "dim7",
    "6": "maj6", "maj6": "maj6", "m6": "min6", "min6": "min6",
    "mmaj7": "minmaj7", "mM7": "minmaj7", "minmaj7": "minmaj7", "m(maj7)": "minmaj7",
}
# Roman-numeral suffix -> (quality if upper case, quality if lower case).
_ROMAN_QUALITY = {
    "": ("maj", "min"),
    "7": ("7", "min7"),
    "maj7": ("maj7", "minmaj7"), "M7": ("maj7", "minmaj7"), "Δ": ("maj7", "minmaj7"), "Δ7": ("maj7", "minmaj7"),
    "°": ("dim", "dim"), "o": ("dim", "dim"), "dim": ("dim", "dim"),
    "°7": ("dim7", "dim7"), "o7": ("dim7", "dim7"), "dim7": ("dim7", "dim7"),
    "ø": ("hdim7", "hdim7"), "ø7": ("hdim7", "hdim7"), "m7b5": ("hdim7", "hdim7"),
    "+": ("aug", "aug"), "aug": ("aug", "aug"),
    "6": ("maj6", "min6"),
    "sus2": ("sus2", "sus2"), "sus4": ("sus4", "sus4"), "sus": ("sus4", "sus4"),
}
_TRIADS = {"maj", "min", "dim", "aug", "sus2", "sus4"}

_SYMBOL_RE = re.compile(r"^([A-Ga-g])([#b♯♭]*)(?::)?(.*?)(?:/([A-Ga-g][#b]*|[b#]*\d+))?$")
_IS_ROMAN = re.compile(r"^[b#♭♯]*[IViv]")
_ROMAN_RE = re.compile(r"^([b#♭♯]*)(VII|VI|IV|V|III|II|I|vii|vi|iv|v|iii|ii|i)(.*)$")


@dataclass(frozen=True)
class QueryChord:
    """One chord of a query: ``root`` is a pitch class (chord symbols) or a degree
    offset relative to the tonic per mode (roman numerals); ``qualities`` the chord
    qualities it accepts."""

    text: str
    qualities: frozenset
    root_pc: int | None = None  # chord symbols
    degree: dict | None = None  # roman numerals: {'major': semitones, 'minor': semitones}


def _accidental(s: str) -> int:
    return s.count("#") + s.count("♯") - s.count("b") - s.count("♭")


def _accepts(quality: str, exact: bool) -> frozenset:
    if quality in _TRIADS and not exact:
        return frozenset(q for q in QUALITIES if TRIAD_FAMILY[q] == quality)
    return frozenset([quality])


def _parse_symbol(tok: str, exact: bool) -> QueryChord:
    m = _SYMBOL_RE.match(tok)
    if not m:
        raise BadInputError(f"progression: cannot read chord {tok!r} (expected e.g. 'Dm7', 'G7', 'Cmaj7', 'F#dim', 'D:min7')")
    letter, acc, suffix, _bass = m.groups()
    if letter.islower() and not suffix:
        # 'a' alone is ambiguous; chord symbols use upper-case roots
        raise BadInputError(f"progression: cannot read chord {tok!r}: chord roots are upper case (A-G)")
    if suffix in QUALITIES:  # mir_eval shorthand, e.g. 'D:min7'
        q = suffix
    elif suffix in _SYMBOL_QUALITY:
        q = _SYMBOL_QUALITY[suffix]
    else:
        raise BadInputError(
            f"progression: unknown chord quality {suffix!r} in {tok!r} "
            "(known: m, 7, maj7, m7, dim, dim7, m7b5, aug, sus2, sus4, 6, m6, mmaj7)")
    root = (_NOTE[letter.upper()] + _accidental(acc)) % 12
    return QueryChord(tok, _accepts(q, exact), root_pc=root)


def _parse_roman(tok: str, exact: bool) -> QueryChord:
    m = _ROMAN_RE.match(tok)
    if not m:
        raise BadInputError(f"progression: cannot read roman numeral {tok!r} (expected e.g. 'ii', 'V7', 'bVII', 'vii°')")
    acc, numeral, suffix = m.groups()
    if numeral.upper() != numeral and numeral.lower() != numeral:
        raise BadInputError(f"progression: {tok!r} mixes upper and lower case")
    if suffix not in _ROMAN_QUALITY:
        raise BadInputError(
            f"progression: unknown suffix {suffix!r} in {tok!r} (known: 7, maj7, °, °7, ø7, +, 6, sus2, sus4; "
            "secondary dominants like V/V are not supported)")
    upper = numeral.isupper()
    q = _ROMAN_QUALITY[suffix][0 if upper else 1]
    step = _ROMAN[numeral.upper()]
    shift = _accidental(acc)
    degree = {mode: (scale[step] + shift) % 12 for mode, scale in SCALES.items()}
    return QueryChord(tok, _accepts(q, exact), degree=degree)


def parse_progression(text: str, *, exact: bool = False) -> tuple[str, list[QueryChord]]:
    """Read a progression: ``("roman", [...])`` or ``("symbols", [...])``.

    Chords are separated by spaces, commas, '|' or '-' ('ii-V-I'; 'C-7' is one chord, a
    minor seventh). At least two chords.

    Example
    -------
    >>> kind, chords = parse_progression("ii V I")
    >>> kind, [c.degree["major"] for c in chords]
    ('roman', [2, 7, 0])
    """
    if text is None or not text.strip():
        raise BadInputError("progression: empty query; give chords, e.g. \"ii V I\" or \"Dm7 G7 Cmaj7\"")
    # ' - ' first: at a space the other separators would match and leave '-' a chord
    tokens = [t for t in re.split(r"\s+-\s+|[\s,|–]+", text.strip()) if t]
    # 'ii-V-I', 'Dm7-G7-C': a '-' between chords, where every part starts a chord ('C-7'
    # is C minor seventh: '-' is also a minor suffix)
    tokens = [p for t in tokens for p in (t.split("-") if _chords_joined_by_dashes(t) else [t])]
    if len(tokens) < 2:
        raise BadInputError(f"progression: {text!r} has {len(tokens)} chord; give at least two, e.g. \"V I\"")
    # Roman numerals start with I or V (after accidentals); chord symbols with A-G.
    roman = [bool(_IS_ROMAN.match(t)) for t in tokens]
    if all(roman):
        return "roman", [_parse_roman(t, exact) for t in tokens]
    if any(roman):
        # a token of the other kind than the first: a chord symbol among numerals (or the
        # reverse) is mixing; anything else is a chord that cannot be read at all
        odd = next(t for t, r in zip(tokens, roman) if r != roman[0])
        if roman[0] and not _SYMBOL_RE.match(odd):
            raise BadInputError(f"progression: cannot read {odd!r}: neither a roman numeral nor a chord symbol")
        raise BadInputError(f"progression: {text!r} mixes roman numerals ({tokens[roman.index(True)]!r}) and chord "
                            "symbols; use one kind")
    return "symbols", [_parse_symbol(t, exact) for t in tokens]


def _chords_joined_by_dashes(token: str) -> bool:
    parts = token.split("-")
    return len(parts) > 1 and all(parts) and (all(_IS_ROMAN.match(p) for p in parts)
                                              or all(p[0] in "ABCDEFGabcdefg" for p in parts))


_QIX = {q: i for i, q in enumerate(QUALITIES)}


def _first_step_filter(kind: str, query: list[QueryChord]) -> tuple[str, list]:
    """SQL condition on ``chord_transitions`` that every match's first step satisfies:
    it lets the search read only the chords of pieces that can match."""
    a, b = query[0], query[1]
    if kind == "symbols":
        ivs = [(b.root_pc - a.root_pc) % 12]
    else:
        ivs = sorted({(b.degree[m] - a.degree[m]) % 12 for m in a.degree})
    cond = ("root_interval IN (SELECT unnest(?)) AND from_quality IN (SELECT unnest(?)) "
            "AND to_quality IN (SELECT unnest(?))")
    return cond, [ivs, sorted(a.qualities), sorted(b.qualities)]


def _load_chords(con, kind: str, query: list[QueryChord], piece_id: str | None = None) -> dict[str, np.ndarray]:
    have = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_name IN ('chords', 'chord_transitions')").fetchall()}
    if have != {"chords", "chord_transitions"}:
        raise IndexTroubleError("the database has no chords tables; open it writable once (atlas ingest) to add them")
    cond, params = _first_step_filter(kind, query)
    only = ""
    if piece_id is not None:
        only = " AND piece_id = ?"
        params.append(piece_id)
    tbl = con.sql(
        f"""WITH cand AS (SELECT DISTINCT piece_id FROM chord_transitions WHERE {cond}{only})
           SELECT c.piece_id, dense_rank() OVER (ORDER BY c.piece_id) AS piece_no,
                  c.chord_index, c.onset_beats, c.onset_s, c.end_beats, c.end_s,
                  c.label, c.quality, coalesce(list_position(?, c.quality) - 1, -1) AS quality_ix,
                  coalesce(c.root_pc, -1) AS root_pc,
                  c.key_tonic_pc, c.key_mode = 'minor' AS is_minor, c.key_name
           FROM chords c WHERE c.quality <> 'N' AND c.piece_id IN (SELECT piece_id FROM cand)
           ORDER BY c.piece_id, c.chord_index""", params=params + [list(QUALITIES)]).to_arrow_table()
    return {name: tbl.column(name).to_numpy(zero_copy_only=False) for name in tbl.column_names}


def search_chords(ch: dict[str, np.ndarray], kind: str, query: list[QueryChord]) -> np.ndarray:
    """Start rows (into the arrays ``ch``, one entry per non-'N' chord ordered by piece
    and chord_index) where the query matches. Pure NumPy; the chords must be
    consecutive segments of one piece (an 'N' between them breaks a match)."""
    n, k = len(ch["root_pc"]), len(query)
    if n < k:
        return np.zeros(0, np.int64)
    m = n - k + 1
    # Integer columns when the caller has them (quality_ix, piece_no, is_minor: what
    # _load_chords reads), else derived here from the text columns.
    qix = ch["quality_ix"] if "quality_ix" in ch else np.array([_QIX.get(q, -1) for q in ch["quality"]], np.int64)
    pid = ch["piece_no"] if "piece_no" in ch else np.unique(ch["piece_id"], return_inverse=True)[1]
    root = ch["root_pc"].astype(np.int64)
    cix = ch["chord_index"].astype(np.int64)
    ok = np.ones(m, bool)
    for j in range(1, k):
        ok &= pid[j:m + j] == pid[:m]
        ok &= cix[j:m + j] == cix[:m] + j
    minor = ch["is_minor"][:m] if "is_minor" in ch else ch["key_mode"][:m] == "minor"
    tonic = ch["key_tonic_pc"][:m].astype(np.int64)
    for j, qc in enumerate(query):
        accept = np.zeros(len(QUALITIES), bool)
        accept[[_QIX[q] for q in qc.qualities]] = True
        ok &= accept[qix[j:m + j]]
        if kind == "roman":
            want = np.where(minor, qc.degree["minor"], qc.degree["major"])
            ok &= (root[j:m + j] - tonic) % 12 == want
        elif j > 0:
            want = (qc.root_pc - query[0].root_pc) % 12
            ok &= (root[j:m + j] - root[:m]) % 12 == want
    return np.flatnonzero(ok)


def find_progression(db_dir, text: str, *, exact: bool = False, limit: int | None = None,
                     piece: str | None = None) -> pa.Table:
    """Every place the progression occurs.

    Returns
    -------
    pa.Table, one row per match in piece and time order: ``piece_id``, ``path``,
    ``chord_index`` (first chord), ``onset_beats``, ``onset_s``, ``end_beats``, ``end_s``
    (of the last chord), ``key`` (local key at the first chord), ``transposition``
    (semitones from the query's chord symbols to the match; NULL for roman numerals),
    ``chords`` (the matched labels) and ``romans`` (the same chords in ``key``, in which
    a roman-numeral query was matched, though a later chord's own local key may differ).
    Its schema metadata ``matches`` and ``pieces`` count every match, before ``limit``;
    ``unanalysed`` the pieces searched that have no harmony yet (``--no-derive``).
    """
    kind, query = parse_progression(text, exact=exact)
    with reading(db_dir) as con:
        pid = None
        if piece is not None:
            from query.export import resolve_piece

            pid = resolve_piece(con, piece)
        ch = _load_chords(con, kind, query, pid)
        starts = search_chords(ch, kind, query)
        # the totals before --limit, for the summary line (schema metadata)
        totals = {b"matches": str(len(starts)), b"pieces": str(len(np.unique(ch["piece_id"][starts]))),
                  b"unanalysed": str(_unanalysed(con, pid))}
        if limit is not None:
            starts = starts[:limit]
        matched = sorted(set(ch["piece_id"][starts].tolist()))
        paths = dict(con.execute("SELECT piece_id, path FROM pieces WHERE piece_id IN (SELECT unnest(?))",
                                 [matched]).fetchall())
    k = len(query)
    ends = starts + k - 1
    labels = ch["label"]
    # romans in the key the match was read in, the first chord's (the ``key`` column):
    # each chord's own local key could differ inside a match ("III VII i" shown "III VII vi")
    idx = starts[:, None] + np.arange(k)
    degree = (ch["root_pc"][idx].astype(np.int64) - ch["key_tonic_pc"][starts, None]) % 12
    mode = np.where(ch["is_minor"][starts], "minor", "major")
    names = {}  # (degree, quality, mode) -> numeral: a few hundred of them, looked up per chord
    romans = [" ".join(names.get(key) or names.setdefault(key, roman_numeral(*key))
                       for key in zip(d.tolist(), ch["quality"][ix].tolist(), [m] * k))
              for d, ix, m in zip(degree, idx, mode.tolist())]
    if kind == "symbols":
        transp = pa.array((ch["root_pc"][starts].astype(np.int64) - query[0].root_pc) % 12, pa.int16())
    else:
        transp = pa.nulls(len(starts), pa.int16())
    return pa.table({
        "piece_id": pa.array(ch["piece_id"][starts], pa.string()),
        "path": pa.array([paths.get(p) for p in ch["piece_id"][starts]], pa.string()),
        "chord_index": pa.array(ch["chord_index"][starts], pa.int32()),
        "onset_beats": pa.array(ch["onset_beats"][starts], pa.float64()),
        "onset_s": pa.array(ch["onset_s"][starts], pa.float64()),
        "end_beats": pa.array(ch["end_beats"][ends], pa.float64()),
        "end_s": pa.array(ch["end_s"][ends], pa.float64()),
        "key": pa.array(ch["key_name"][starts], pa.string()),
        "transposition": transp,
        "chords": pa.array([" ".join(labels[s:s + k]) for s in starts.tolist()], pa.string()),
        "romans": pa.array(romans, pa.string()),
    }).replace_schema_metadata(totals)


def _unanalysed(con, piece_id: str | None) -> int:
    """Pieces (or the one piece) that the harmony stage has not processed yet and the
    next ingest will (its ``pending_pieces``: a piece it failed on is not counted)."""
    from ingest import harmony
    from ingest.derived import pending_pieces

    todo = pending_pieces(con, harmony)
    return len(todo) if piece_id is None else int(piece_id in todo)


_SHOWN = ["chord_index", "onset_beats", "end_beats", "onset_s", "end_s", "label", "roman", "key_name", "bass_pc", "pcs"]


def piece_chords(db_dir, piece: str) -> tuple[pa.Table, str]:
    """The chord segments of a stored piece, or of a MIDI file analysed on the fly.

    Returns (table with ``chord_index``, ``onset_beats``, ``end_beats``, ``onset_s``,
    ``end_s``, ``label``, ``roman``, ``key_name``, ``bass_pc``, ``pcs``; the piece's key).
    """
    from pathlib import Path

    from atlas_db.connection import db_file, resolve_db_dir

    db = resolve_db_dir(db_dir)
    pid = None
    if db_file(db).exists():
        from query.export import NoSuchPieceError, resolve_piece, stored_id_of_file

        with reading(db) as con:
            if Path(piece).is_file():  # by its bytes: a file changed since its ingest is analysed as it is
                pid = stored_id_of_file(con, piece)
            else:
                try:
                    pid = resolve_piece(con, piece)
                except NoSuchPieceError as e:
                    raise BadInputError(f"{piece}: no such piece in {db} and no such file") from e
            if pid is not None:
                tbl = con.sql(
                    f"SELECT {', '.join(_SHOWN)} FROM chords WHERE piece_id = ? ORDER BY chord_index",
                    params=[pid]).to_arrow_table()
                row = con.execute("SELECT key_name FROM piece_keys WHERE piece_id = ?", [pid]).fetchone()
                if row is not None:
                    return tbl, row[0]
                if not Path(piece).is_file():  # a file is analysed below, as one not stored
                    raise IndexTroubleError(f"{piece}: no harmony rows yet; run `atlas ingest` again to bring "
                                            "derived stages up to date")
    path = Path(piece)
    if not path.is_file():  # (the database is there: a missing piece was said above)
        raise BadInputError(f"{piece}: no such file, and no database at {db} to look a piece up in")
    from ingest.harmony import analyze_notes
    from ingest.midi_parse import read_midi_file
    from ingest.sources import AUDIO_SUFFIXES

    if path.suffix.lower() in AUDIO_SUFFIXES:
        raise BadInputError(f"{piece}: a recording is analysed when it is ingested; "
                            f"`atlas ingest {piece}` first, then ask for its chords")
    t = read_midi_file(path)
    res = analyze_notes(t["notes"], tracks=t["tracks"], tempo=t["tempo_changes"],
                        ticks_per_beat=t["pieces"]["ticks_per_beat"])
    if res["piece_keys"].num_rows == 0:
        raise BadInputError(f"{piece}: no pitched notes to analyse")
    return res["chords"].select(_SHOWN), res["piece_keys"].column("key_name")[0].as_py()
