"""Train the cover embedding (``benchmarks/cover_embedding_model.py``) and save its weights
(by default to ``cover_embedding_model.WEIGHTS``, where ``benchmarks/probes/cover_embedding.py``
reads them). Measured as a fusion signal in docs/covers-history.md ("The learned embedding").

    nice .venv/bin/python benchmarks/train_cover_embedding.py              # ~12 min on 2 cores
    nice .venv/bin/python benchmarks/train_cover_embedding.py --steps 50 --out /tmp/e.pt

Training data: the POP909-dev songs that are never queries of the honest cover benchmark
(``benchmarks/covers_honest.py``: songs whose files are all near-copies of one another,
stored there as distractors only); neither the fit part nor the held-out part is read.
Each pair is a query and its stored window: the query is a passage of 8-45 s of one file
of the song, sometimes its accompaniment alone, through
``covers_honest.degrade`` with random strengths (re-timed by 0.65-1.5 with a tempo
curve, or a performance-like rendering; onset jitter up to 80 ms; up to 25% of the notes
dropped and 12% spurious; merged into one part; transposed), and the window is another
file of the song (or the same) over the same beats, as long as the query is in its own
beats (the search does not know the query's time scale, and compares windows of that
length). Loss: InfoNCE over the batch's songs, both ways. The last 10% of the songs are a
validation set: the script prints how often a validation query's own song has the best
window among all validation songs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cover_embedding_model import WEIGHTS, CoverEmbedding, build_net, pooled, roll, window_embeddings  # noqa: E402
from covers import _sel  # noqa: E402
from covers_honest import DATA, degrade, non_query_files, song_of, training_split  # noqa: E402


def training_songs(data: Path) -> dict[str, list[dict]]:
    """song -> the notes of its files, for the songs that are no benchmark query's song."""
    out: dict[str, list[dict]] = {}
    for f, n in non_query_files(data).items():
        if n["pitch"].size >= 100:
            out.setdefault(song_of(f), []).append(n)
    return out


def rearranged(on, du, p, track, rng):
    """The window's notes as another arrangement might have them: the accompaniment
    (every track but MELODY) thinned by up to half, one of its tracks now and then left
    out, a third of its notes moved by an octave."""
    acc = track != "MELODY"
    keep = ~acc | (rng.random(on.size) > rng.uniform(0, 0.5))
    names = np.unique(track[acc])
    if names.size > 1 and rng.random() < 0.3:
        keep &= track != names[int(rng.integers(0, names.size))]
    p = p.copy()
    move = acc & (rng.random(on.size) < 0.33)
    p[move] += rng.choice([-12, 12], int(move.sum()))
    return on[keep], du[keep], np.clip(p[keep], 0, 127)


def draw_pair(files: list[dict], rng, arrangement: float = 0.0):
    """(query roll, window roll) of one song, or None when the passage is too thin; with
    probability ``arrangement`` the window is ``rearranged``."""
    x = files[int(rng.integers(0, len(files)))]
    y = files[int(rng.integers(0, len(files)))]
    on_s = x["onset_s"]
    length_s = rng.uniform(8, 45)
    t0 = rng.uniform(on_s.min(), max(on_s.max() - length_s, on_s.min()))
    m = (on_s >= t0) & (on_s < t0 + length_s)
    if rng.random() < 0.15 and (x["track"] == "PIANO").any():
        m &= x["track"] == "PIANO"
    if m.sum() < 16:
        return None
    src = _sel(x, m)
    b0, b1 = float(src["onset_beats"].min()), float(src["onset_beats"].max())
    factors = {"merge"} | {f for f in ("jitter", "edit") if rng.random() < 0.75}
    factors.add("perf" if rng.random() < 0.15 else "retime")
    level = dict(f=tuple(sorted(rng.uniform(0.65, 1.5, 2))), curve=rng.uniform(0, 0.2),
                 jitter_s=rng.uniform(0, 0.08), dur_jit=rng.uniform(0, 0.35), drop=rng.uniform(0, 0.25),
                 extra=rng.uniform(0, 0.12))
    on, du, p, _ = degrade(src, factors, level, rng)
    if on.size < 8:
        return None
    # the stored window: as long as the query in its own beats, centred on the same passage
    length = max(float(on.max()), 2.0)
    c = 0.5 * (b0 + b1)
    yon = y["onset_beats"]
    a = min(max(c - length / 2, float(yon.min())), max(float(yon.max()) - length, float(yon.min())))
    w = (yon >= a) & (yon < a + length)
    if w.sum() < 8:
        return None
    wn = (yon[w], y["duration_beats"][w], y["pitch"][w])
    if arrangement and rng.random() < arrangement:
        wn = rearranged(*wn, y["track"][w], rng)
        if wn[0].size < 8:
            return None
    return roll(on, du, p), roll(*wn)


def batch(rolls):
    """Rolls padded to one length, and their frame masks."""
    t = max(r.shape[2] for r in rolls)
    x = np.zeros((len(rolls),) + rolls[0].shape[:2] + (t,), np.float32)
    mk = np.zeros((len(rolls), t), np.float32)
    for i, r in enumerate(rolls):
        x[i, :, :, :r.shape[2]] = r
        mk[i, :r.shape[2]] = 1
    return x, mk


def draw_batch(songs, names, size, rng, arrangement=0.0):
    q, w = [], []
    for s in rng.permutation(names)[:size]:
        for _ in range(4):
            pair = draw_pair(songs[s], rng, arrangement)
            if pair is not None:
                q.append(pair[0])
                w.append(pair[1])
                break
    return batch(q), batch(w)


def validate(model_path, songs, val, rng, draws=10):
    """Share of validation queries whose own song has the best window among all
    validation songs' windows (every file of every song, stride 2 frames)."""
    import torch

    model = CoverEmbedding(model_path)
    frames = {s: [model.frames(n["onset_beats"], n["duration_beats"], n["pitch"]) for n in songs[s]] for s in val}
    hits = total = 0
    for s in val:
        for _ in range(draws):
            pair = None
            while pair is None:
                pair = draw_pair(songs[s], rng)
            with torch.no_grad():
                q = model.net(torch.from_numpy(pair[0])[None])[0].T.numpy().mean(0)
            q /= max(float(np.linalg.norm(q)), 1e-9)
            length = pair[0].shape[2]
            best = {o: max(float((window_embeddings(f, length, 2) @ q).max()) for f in frames[o]) for o in val}
            hits += max(best, key=best.get) == s
            total += 1
    return hits / total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arrangement", type=float, default=0.0,
                    help="share of stored windows drawn as another arrangement (``rearranged``; training "
                         "songs' files are near-copies, the benchmark's versions are not)")
    args = ap.parse_args(argv)
    if args.steps < 4:
        ap.error(f"--steps {args.steps}: at least 4 (the learning rate warms up over at least 2 steps)")

    import torch

    songs = training_songs(args.data)
    rng, train, val = training_split(songs, args.seed, min_val=2)
    config = dict(width=args.width)
    net = build_net(**config)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps,
                                                pct_start=max(0.05, 2.0 / args.steps))  # >= 2 warm-up steps
    t0 = time.perf_counter()
    run_loss = run_acc = 0.0
    for step in range(1, args.steps + 1):
        (qx, qm), (wx, wm) = draw_batch(songs, train, args.batch, rng, args.arrangement)
        eq = pooled(net(torch.from_numpy(qx)), torch.from_numpy(qm))
        ew = pooled(net(torch.from_numpy(wx)), torch.from_numpy(wm))
        logits = eq @ ew.T / args.temperature
        target = torch.arange(logits.shape[0])
        loss = 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                      + torch.nn.functional.cross_entropy(logits.T, target))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        run_loss += float(loss.detach())
        run_acc += float((logits.argmax(1) == target).float().mean())
        if step % 50 == 0:
            print(f"step {step}: loss {run_loss / 50:.3f}, in-batch top-1 {run_acc / 50:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            run_loss = run_acc = 0.0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": config, "weights": net.state_dict()}, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    acc = validate(args.out, songs, val, np.random.default_rng([7, args.seed]))
    print(f"validation: own song's window best among {len(val)} songs for {acc:.3f} of the queries")


if __name__ == "__main__":
    main()
