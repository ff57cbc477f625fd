"""Train the tune-note classifier (``benchmarks/tune_notes_model.py``) and save its weights
(by default to ``tune_notes_model.WEIGHTS``, where ``benchmarks/probes/tune_notes.py``
reads them). Measured, not kept in the search: docs/covers-history.md, "The learned tune line".

    nice .venv/bin/python benchmarks/train_tune_notes.py                  # ~10 min on 2 cores
    nice .venv/bin/python benchmarks/train_tune_notes.py --out /tmp/t.npz --epochs 2

Training data: the POP909-dev songs that are never queries of the honest cover benchmark
(``benchmarks/covers_honest.py``: songs whose files are all near-copies of one another,
stored there as distractors only), one file per song; a note is tune when it is in the
file's MELODY track. Each training sequence is a random excerpt of 8-64 beats of a file
(the whole file one time in five), merged into one part and drawn with: a transposition
of -6..+6, a tempo curve and scale, onset jitter of up to 0.15
beat, durations scaled by 0.6-1.4, 0-25% of the notes dropped and 0-12% spurious notes
(near a kept note's pitch, anywhere in the excerpt). Features are computed by
``tune_notes_model.note_features``, as the probe computes them for a query. The last 10% of the songs
are a validation set; the script prints its per-note accuracy and the tune line's
precision / recall against the skyline's. Needs torch (the audio extra's pin).
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

from covers_honest import DATA, _warp, non_query_files, training_split  # noqa: E402
from indexers.features import skyline  # noqa: E402
from tune_notes_model import N_FEATURES, WEIGHTS, TuneNoteModel, note_features, save_weights  # noqa: E402


def training_songs(data: Path):
    """(path -> notes) of one file per song that is no benchmark query's song."""
    return {f: n for f, n in non_query_files(data).items()
            if Path(f).parent.name != "versions" and (n["track"] == "MELODY").sum() >= 50}


def draw(n: dict, rng, accompaniment_only: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One augmented one-part excerpt: (onset_beats, duration_beats, pitch, is_tune); with
    probability ``accompaniment_only`` the PIANO track's notes alone (no tune)."""
    on = n["onset_beats"].astype(np.float64)
    du = n["duration_beats"].astype(np.float64)
    p = n["pitch"].astype(np.int64) + int(rng.integers(-6, 7))
    y = n["track"] == "MELODY"
    length = rng.uniform(8, 64)  # beats
    t0 = rng.uniform(on.min(), max(on.max() - length, on.min()))
    m = (on >= t0) & (on < t0 + length)
    if rng.random() < 0.2:  # a whole file now and then
        m[:] = True
    if accompaniment_only and rng.random() < accompaniment_only and (n["track"] == "PIANO").any():
        # the accompaniment alone: a part with no tune at all, every note labelled no
        m &= n["track"] == "PIANO"
    on, du, p, y = on[m], du[m], p[m], y[m]
    if on.size < 8:
        return None
    keep = rng.random(on.size) > rng.uniform(0, 0.25)
    on, du, p, y = on[keep], du[keep], p[keep], y[keep]
    n_extra = int(round(rng.uniform(0, 0.12) * on.size))
    if n_extra and on.size:
        src = rng.integers(0, on.size, n_extra)
        on = np.concatenate([on, rng.uniform(on.min(), on.max(), n_extra)])
        du = np.concatenate([du, rng.uniform(0.25, 1.0, n_extra)])
        p = np.concatenate([p, p[src] + rng.integers(-7, 8, n_extra)])
        y = np.concatenate([y, np.zeros(n_extra, bool)])
    on = on + rng.uniform(-1, 1, on.size) * rng.uniform(0, 0.15)
    du = du * rng.uniform(0.6, 1.4, on.size)
    # tempo curve: local rate 1 +- up to 15% (the benchmark's warp)
    on0 = on - on.min()
    on, off = _warp(on0, on0 + du, rng, rng.uniform(0, 0.15))
    return on * rng.uniform(0.5, 2.0), np.maximum(off - on, 0.02), np.clip(p, 0, 127), y


def batchify(samples, seq: int):
    """Fixed-length (seq) windows of the samples' features and labels, with a mask."""
    xs, ys, ms = [], [], []
    for on, du, p, y in samples:
        order, f = note_features(on, du, p)
        yy = y[order].astype(np.float32)
        for a in range(0, f.shape[0], seq):
            x = np.zeros((seq, N_FEATURES), np.float32)
            t = np.zeros(seq, np.float32)
            mk = np.zeros(seq, np.float32)
            b = min(a + seq, f.shape[0])
            x[:b - a], t[:b - a], mk[:b - a] = f[a:b], yy[a:b], 1
            xs.append(x)
            ys.append(t)
            ms.append(mk)
    return np.stack(xs), np.stack(ys), np.stack(ms)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--draws", type=int, default=60, help="augmented excerpts per song per epoch")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--kernel", type=int, default=5)
    ap.add_argument("--dilations", default="1,2,4,8,1", help="one per layer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--accompaniment", type=float, default=0.0,
                    help="share of draws that are the accompaniment alone, no tune notes (the second form "
                         "measured in docs/covers-history.md: 0.15)")
    args = ap.parse_args(argv)

    import torch

    songs = training_songs(args.data)
    rng, train, val = training_split(songs, args.seed, min_val=1)

    val_samples = [s for f in val for s in (draw(songs[f], np.random.default_rng([7, i]), args.accompaniment)
                                            for i in range(20)) if s is not None]
    # feature standardisation from one pass of training draws
    x0, _, m0 = batchify([s for f in train[:40] for s in [draw(songs[f], rng)] if s is not None], 256)
    flat = x0[m0 > 0]
    mean, std = flat.mean(0), flat.std(0) + 1e-6

    dil = [int(d) for d in args.dilations.split(",")]
    layers = []
    c_in = N_FEATURES
    for i, d in enumerate(dil):
        last = i == len(dil) - 1
        layers.append(torch.nn.Conv1d(c_in, 1 if last else args.width, args.kernel, dilation=d,
                                      padding=d * (args.kernel // 2)))
        if not last:
            layers.append(torch.nn.ReLU())
        c_in = args.width
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    mt, st = torch.tensor(mean), torch.tensor(std)

    def forward(x):
        return net(((torch.tensor(x) - mt) / st).transpose(1, 2))[:, 0]

    vx, vy, vm = batchify(val_samples, 512)
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        samples = [s for f in train for s in (draw(songs[f], rng, args.accompaniment) for _ in range(args.draws))
                   if s is not None]
        x, y, m = batchify(samples, 256)
        perm = rng.permutation(x.shape[0])
        net.train()
        tot = 0.0
        for a in range(0, perm.size, 64):
            i = perm[a:a + 64]
            logit = forward(x[i])
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(
                logit, torch.tensor(y[i]), reduction="none") * torch.tensor(m[i])).sum() / float(m[i].sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * i.size
        sched.step()
        net.eval()
        with torch.no_grad():
            pv = torch.sigmoid(forward(vx)).numpy()
        acc = float((((pv >= 0.5) == (vy > 0.5)) * vm).sum() / vm.sum())
        print(f"epoch {epoch + 1}: loss {tot / perm.size:.4f}, validation note accuracy {acc:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    convs = [m for m in net if isinstance(m, torch.nn.Conv1d)]
    save_weights(args.out, [(c.weight.detach().numpy(), c.bias.detach().numpy()) for c in convs], dil, mean, std)
    print(f"saved {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")

    # the tune line on the validation draws: the model's kept notes against the skyline
    model = TuneNoteModel(args.out)
    stats = {"model": [0, 0, 0], "skyline": [0, 0, 0]}  # tune notes kept, notes kept, tune notes
    for on, du, p, y in val_samples:
        order, f = note_features(on, du, p)
        keep = np.zeros(on.size, bool)
        keep[order] = model.probabilities(f) >= 0.5
        sky_p, sky_on = skyline(on, du, p)
        # skyline notes back to the input notes by (onset, pitch)
        key = {(float(np.float32(a)), int(b)): i for i, (a, b) in enumerate(zip(on, p))}
        sky = np.zeros(on.size, bool)
        for a, b in zip(sky_on, sky_p):
            i = key.get((float(a), int(b)))
            if i is not None:
                sky[i] = True
        for name, k in (("model", keep), ("skyline", sky)):
            stats[name][0] += int((k & y).sum())
            stats[name][1] += int(k.sum())
            stats[name][2] += int(y.sum())
    for name, (tp, kept, pos) in stats.items():
        print(f"validation {name}: tune precision {tp / max(kept, 1):.3f}, tune recall {tp / max(pos, 1):.3f}")


if __name__ == "__main__":
    main()
