"""The built cover index on disk, so that a new process (each `atlas covers`, the TUI)
maps it in instead of reading every piece's features and notes from DuckDB and building
the n-gram and TF-IDF indexes again: at 100,000 pieces that build took ~5 s of a new
process's ~6 s (docs/covers.md, "The cover index on disk").

The index is written as plain ``.npy`` arrays and a ``manifest.json`` that says how they
make the objects (no pickle: a file is read with ``allow_pickle=False``, and only the
four classes of :func:`_classes` are rebuilt). It lives in ``<db>/cover_index/<key>/``; the
key hashes what the index is made from: the database file's size and modification time
(and its write-ahead log's), the source of the ``query`` and ``indexers`` packages, and
the search settings (``ALIGN``). A process that finds no folder of its key but one made
by the same code and settings (``made_by`` in its manifest) for an older state of the
database brings that one up to date (``query.cover_update``); else it builds the index.
A folder appears whole (written under a temporary name, then renamed), and writing one
removes the folders of other keys.

Arrays of 1 MB or more are mapped copy-on-write (``mmap_mode="c"``): the pages a search
touches are read when it touches them, and writing to an array changes this process's
copy only, never the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

__all__ = ["cache_key", "made_by", "save_index", "load_cached", "load_older", "rekey", "cache_dir", "FORMAT"]

FORMAT = 1
MAP_BYTES = 1 << 20  # smaller arrays are read whole: a mapping costs more than it saves there
_code_hash: str | None = None


def cache_dir(db_dir) -> Path:
    return Path(db_dir) / "cover_index"


def _classes() -> dict:
    from query.cover_fusion import IntervalTfidf
    from query.cover_notes import NoteArrays
    from query.covers import CoverIndex, _GramIndex

    return {c.__name__: c for c in (CoverIndex, _GramIndex, IntervalTfidf, NoteArrays)}


def _source_hash() -> str:
    """SHA-256 of the ``query`` and ``indexers`` packages' source and data files (once a
    process): a change to the code that builds the index makes a new key."""
    global _code_hash
    if _code_hash is None:
        h = hashlib.sha256()
        root = Path(__file__).resolve().parent.parent
        for pkg in ("query", "indexers"):
            for f in sorted((root / pkg).glob("*")):
                if f.suffix in (".py", ".json"):
                    h.update(f"{pkg}/{f.name}\0".encode())
                    h.update(f.read_bytes())
        _code_hash = h.hexdigest()
    return _code_hash


def db_stamp(db_dir) -> list:
    """(size, modification time in ns) of the database file and of its write-ahead log
    (None where absent): any write changes one of them."""
    from atlas_db.connection import db_file

    out = []
    for p in (db_file(Path(db_dir)), Path(str(db_file(Path(db_dir))) + ".wal")):
        try:
            s = p.stat()
            out.append([s.st_size, s.st_mtime_ns])
        except FileNotFoundError:
            out.append(None)
    return out


def cache_key(db_dir, settings: dict) -> str:
    """The hex key of the index of this database, code and ``settings``."""
    return _hash({"db": db_stamp(db_dir), "made_by": made_by(settings)})


def made_by(settings: dict) -> str:
    """The hex key of the code and ``settings`` alone: an index saved by the same ones,
    for an older state of the database, can be brought up to date (``query.cover_update``)."""
    return _hash({"format": FORMAT, "code": _source_hash(), "settings": settings,
                  "numpy": np.__version__.split(".")[0]})


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:24]


# -- writing --------------------------------------------------------------------------

class _Writer:
    def __init__(self, folder: Path):
        self.folder = folder
        self.n = 0

    def array(self, a: np.ndarray) -> str:
        name = f"{self.n:03d}.npy"
        self.n += 1
        np.save(self.folder / name, np.ascontiguousarray(a), allow_pickle=False)
        return name

    def strings(self, values) -> list[str]:
        """Texts as their UTF-8 bytes back to back and their offsets (fixed-width text
        would make every entry as long as the longest path)."""
        raw = [x.encode("utf-8", "surrogatepass") for x in values]
        off = np.concatenate([[0], np.cumsum([len(b) for b in raw], dtype=np.int64)]).astype(np.int64)
        return [self.array(np.frombuffer(b"".join(raw), np.uint8)), self.array(off)]

    def encode(self, v, where: str):
        from scipy import sparse

        classes = _classes()
        if v is None or isinstance(v, (bool, int, float, str)):
            return {"value": v}
        if isinstance(v, (np.integer, np.floating, np.bool_)):
            return {"value": v.item()}
        if isinstance(v, Path):
            return {"path": str(v)}
        if isinstance(v, np.ndarray):
            if v.dtype == object:  # strings (piece ids, paths)
                if v.ndim != 1 or not all(isinstance(x, str) for x in v):
                    raise TypeError(f"{where}: an object array of other than str")
                return {"strings": self.strings(v)}
            return {"array": self.array(v)}
        if sparse.issparse(v) and v.format in ("csc", "csr"):
            return {"sparse": v.format, "shape": list(v.shape),
                    "data": self.array(v.data), "indices": self.array(v.indices), "indptr": self.array(v.indptr)}
        if isinstance(v, (list, tuple)):
            return {"list" if isinstance(v, list) else "tuple": [self.encode(x, f"{where}[{i}]")
                                                                 for i, x in enumerate(v)]}
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v) or not all(isinstance(x, (int, np.integer)) for x in v.values()):
                raise TypeError(f"{where}: a dict other than str -> int")
            return {"str_int_dict": [*self.strings(v), self.array(np.asarray(list(v.values()), np.int64))]}
        if type(v).__module__.startswith("faiss"):
            return {"faiss": True}  # its own file (indexers.faiss_index), read again by the ids
        name = type(v).__name__
        if classes.get(name) is type(v):
            return {"object": name, "attrs": {k: self.encode(x, f"{where}.{k}") for k, x in vars(v).items()}}
        raise TypeError(f"{where}: {type(v).__module__}.{name} has no form on disk")


def save_index(index, db_dir, key: str, maker: str = "") -> Path:
    """Write ``index`` (a ``query.covers.CoverIndex``) as the cache of ``key``; returns
    its folder. Raises OSError (a folder this process cannot write, a full disk) or
    TypeError (an attribute of a type with no form on disk); nothing half-written is
    ever read: the folder is renamed into place whole. ``maker``: :func:`made_by`'s key."""
    root = cache_dir(db_dir)
    root.mkdir(exist_ok=True)
    tmp = root / f"tmp-{os.getpid()}-{key}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        w = _Writer(tmp)
        tree = w.encode(index, "index")
        with open(tmp / "manifest.json", "w") as f:
            json.dump({"format": FORMAT, "key": key, "made_by": maker, "tree": tree}, f)
        final = root / key
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "manifest.json").exists():  # not another process's whole copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in root.iterdir():  # other keys' folders (out of date), and what a killed writer left
        if old.name != key and (not old.name.startswith("tmp-") or not _running(old.name.split("-")[1])):
            shutil.rmtree(old, ignore_errors=True)
    return final


def _running(pid: str) -> bool:
    """Whether the process ``pid`` (a tmp- folder's writer) still runs."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError):  # (not a number; another user's process)
        return True
    return True


# -- reading --------------------------------------------------------------------------

class _Reader:
    def __init__(self, folder: Path, faiss_of):
        self.folder = folder
        self.faiss_of = faiss_of

    def array(self, name: str) -> np.ndarray:
        path = self.folder / name
        if path.stat().st_size < MAP_BYTES:
            return np.load(path, allow_pickle=False)
        return np.load(path, mmap_mode="c", allow_pickle=False).view(np.ndarray)

    def strings(self, data: str, offsets: str) -> list[str]:
        raw, off = self.array(data).tobytes(), self.array(offsets).tolist()
        return [raw[a:b].decode("utf-8", "surrogatepass") for a, b in zip(off[:-1], off[1:])]

    def decode(self, e: dict):
        from scipy import sparse

        if "value" in e:
            return e["value"]
        if "path" in e:
            return Path(e["path"])
        if "array" in e:
            return self.array(e["array"])
        if "strings" in e:
            return np.array(self.strings(*e["strings"]), dtype=object)
        if "sparse" in e:
            cls = sparse.csc_matrix if e["sparse"] == "csc" else sparse.csr_matrix
            m = cls((self.array(e["data"]), self.array(e["indices"]), self.array(e["indptr"])),
                    shape=tuple(e["shape"]), copy=False)
            return m
        if "list" in e:
            return [self.decode(x) for x in e["list"]]
        if "tuple" in e:
            return tuple(self.decode(x) for x in e["tuple"])
        if "str_int_dict" in e:
            data, offsets, values = e["str_int_dict"]
            return dict(zip(self.strings(data, offsets), self.array(values).tolist()))
        if "object" in e:
            cls = _classes()[e["object"]]  # only these classes: a manifest names no other code
            obj = cls.__new__(cls)
            attrs = {k: v for k, v in e["attrs"].items() if "faiss" not in v}
            obj.__dict__.update({k: self.decode(v) for k, v in attrs.items()})
            for k in e["attrs"].keys() - attrs.keys():
                obj.__dict__[k] = self.faiss_of(obj)
            return obj
        raise ValueError(f"{self.folder}: an entry of no known kind ({sorted(e)})")


def load_cached(db_dir, key: str, faiss_of):
    """The index saved under ``key``, or None where there is none or it cannot be read
    (a damaged folder is removed, for the caller to build and save the index again).
    ``faiss_of(index)`` gives its FAISS index (read from its own file, by the ids)."""
    folder = cache_dir(db_dir) / key
    try:
        with open(folder / "manifest.json") as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT or manifest.get("key") != key:
            return None
        return _Reader(folder, faiss_of).decode(manifest["tree"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, KeyError, TypeError):  # damaged: removed, so it is written again
        shutil.rmtree(folder, ignore_errors=True)
        return None


def load_older(db_dir, maker: str):
    """(key, index) of a saved index that ``maker`` (:func:`made_by`) made for another
    state of the database, its FAISS index left out (None); or None."""
    root = cache_dir(db_dir)
    if not root.is_dir():
        return None
    for folder in sorted(root.iterdir()):
        if folder.name.startswith("tmp-"):
            continue
        try:
            with open(folder / "manifest.json") as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            continue
        if manifest.get("format") == FORMAT and manifest.get("made_by") == maker and manifest.get("key") == folder.name:
            index = load_cached(db_dir, folder.name, lambda _: None)
            if index is not None:
                return folder.name, index
    return None


def rekey(db_dir, old: str, new: str, maker: str) -> None:
    """The folder of ``old`` renamed ``new``: the index of a database whose writes changed
    no piece's cover features (an ingest of files it already held, say) is the same."""
    root = cache_dir(db_dir)
    tmp = root / f"tmp-{os.getpid()}-{new}"
    with open(root / old / "manifest.json") as f:
        manifest = json.load(f)
    manifest.update(key=new, made_by=maker)
    with open(root / old / f"manifest.json.{os.getpid()}", "w") as f:
        json.dump(manifest, f)
    os.rename(root / old, tmp)  # (a reader of ``old`` meanwhile finds none, and builds)
    os.replace(tmp / f"manifest.json.{os.getpid()}", tmp / "manifest.json")
    os.rename(tmp, root / new)
