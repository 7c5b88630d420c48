#!/usr/bin/python3
"""Trains the edge anomaly model and exports models/anomaly.onnx (+ a partial metadata file
that evaluate.ts completes with the held-out figures).

The model is fitted on BENIGN rows only: no attack label is used, so every attack family is
held out from training. The validation trace (another seed) calibrates the score on its
benign rows; its attack rows are only reported.

Graph (one ONNX file, inputs float32 [N, F] straight from src/risk/features.ts):
  z       = clip((x - mean) / std, -CLIP, CLIP)              normalisation lives in the graph
  ae_f    = ln(1 + (decoder(encoder(z)) - z)^2 / scale_f)    autoencoder: what does not fit
                                                             the joint benign pattern
  tail_f  = -ln(P_benign(X_f >= x_f)), piecewise linear      per feature: how far out in the
            (0 for NOT_SUSPICIOUS_WHEN_HIGH features)
            over benign quantile knots up to ln(1e4) at the  benign upper tail
            benign max, + ln(1 + (x_f - max_f) / std_f)
  per group g of FEATURE_GROUPS (rate, bytes, hour, ...):    each aspect of behaviour counts
  AE_g    = max_{f in g} ae_f,  TAIL_g = max_{f in g} tail_f once, however many features
                                                             describe it
  raw     = sum_g AE_g / sd_AE + sum_g TAIL_g / sd_TAIL      evidence across aspects
            + W_MAX * max_f tail_f / sd_MAX - centre         one aspect far out on its own
  score   = sigmoid(a * (raw - b))                           0.5 at the benign validation p99,
                                                             0.9 at its p99.9
  outputs: score [N], contributions [N, F] = c_f / sum_f c_f, c_f = ae_f / sd_AE + tail_f / sd_TAIL
The sd_* are the spreads of each term over the benign validation rows. Measured on the
validation trace and recorded in models/README.md: summed over all 52 features, benign noise
spread over many features hid a single far-out aspect (slow exfiltration's bytes, off-hours
access's hour); the group maxima and the max term recover both without losing the others.

Usage: /usr/bin/python3 models/train/train.py --train DIR --val DIR --out models/anomaly.onnx
Deterministic: fixed seeds, one thread, deterministic algorithms.
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
from torch import nn

CLIP = 12.0
W_MAX = 0.8
TAIL_CAP = math.log(1e4)
# Benign quantile levels for the tail term: dense where anomalies live.
LEVELS = np.array([0, .1, .2, .3, .4, .5, .6, .7, .8, .9, .95, .97, .98, .99, .995, .998, .999, .9995, .9999, 1.0])
WARMUP_HOURS = 48  # generate.ts WARMUP_DAYS: rows before it do not calibrate


def load(d):
    X = np.load(os.path.join(d, 'X.npy'))
    y = np.load(os.path.join(d, 'y.npy'))
    hours = np.load(os.path.join(d, 'hour.npy'))
    with open(os.path.join(d, 'meta.json')) as f:
        meta = json.load(f)
    return X, y, hours, meta


class Model(nn.Module):
    def __init__(self, mean, std, f, hidden, code, groups, suspicious_high):
        super().__init__()
        # [G, F] 0/1 membership: every value masked is >= 0, so a product and a max pick the group maximum.
        self.register_buffer('gmask', torch.tensor(groups, dtype=torch.float32))
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32))
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32))
        self.register_buffer('a', torch.tensor(1.0))
        self.register_buffer('b', torch.tensor(0.0))
        self.register_buffer('scale', torch.ones(f))
        self.register_buffer('lo', torch.zeros(f, len(LEVELS) - 1))
        self.register_buffer('width', torch.ones(f, len(LEVELS) - 1))
        self.register_buffer('rise', torch.zeros(f, len(LEVELS) - 1))
        self.register_buffer('top', torch.zeros(f))
        self.register_buffer('suspicious_high', torch.tensor(suspicious_high, dtype=torch.float32))
        self.register_buffer('w_ae', torch.tensor(1.0))
        self.register_buffer('w_tail', torch.tensor(0.0))
        self.register_buffer('w_max', torch.tensor(0.0))
        self.register_buffer('centre', torch.tensor(0.0))
        self.enc = nn.Sequential(nn.Linear(f, hidden), nn.Tanh(), nn.Linear(hidden, code), nn.Tanh())
        self.dec = nn.Sequential(nn.Linear(code, hidden), nn.Tanh(), nn.Linear(hidden, f))

    def errors(self, x):
        z = torch.clamp((x - self.mean) / self.std, -CLIP, CLIP)
        return (self.dec(self.enc(z)) - z) ** 2

    def tail(self, x):
        # sum over knot segments of rise * clamp((x - lo) / width, 0, 1): piecewise linear
        t = torch.clamp((x.unsqueeze(2) - self.lo) / self.width, 0.0, 1.0)
        # Past the benign maximum, keep growing with the log of the distance in stds, so that 50
        # requests a second is more surprising than the busiest benign minute, not equal to it.
        beyond = torch.log1p(torch.relu(x - self.top) / self.std)
        return ((t * self.rise).sum(dim=2) + beyond) * self.suspicious_high

    def terms(self, x):
        """Per-feature autoencoder and tail surprises, [N, F] each."""
        return torch.log1p(self.errors(x) / self.scale), self.tail(x)

    def group_max(self, v):
        return (v.unsqueeze(1) * self.gmask).max(dim=2).values

    def forward(self, x):
        ae, tl = self.terms(x)
        raw = (self.w_ae * self.group_max(ae).sum(dim=1) + self.w_tail * self.group_max(tl).sum(dim=1)
               + self.w_max * tl.max(dim=1).values - self.centre)
        score = torch.sigmoid(self.a * (raw - self.b))
        c = self.w_ae * ae + self.w_tail * tl
        contributions = c / (c.sum(dim=1, keepdim=True) + 1e-12)
        return score, contributions


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--train', required=True)
    p.add_argument('--val', required=True)
    p.add_argument('--out', required=True)
    p.add_argument('--meta-out', required=True)
    p.add_argument('--seed', type=int, default=7)
    p.add_argument('--epochs', type=int, default=12)
    p.add_argument('--rows', type=int, default=250_000)
    p.add_argument('--hidden', type=int, default=48)
    p.add_argument('--code', type=int, default=10)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    started = time.process_time()

    X, y, _, meta = load(args.train)
    Xv, yv, hv, meta_v = load(args.val)
    assert meta['featureSpecHash'] == meta_v['featureSpecHash'], 'train and val featurized with different specs'
    benign = X[y == 0]
    if len(benign) > args.rows:
        benign = benign[rng.choice(len(benign), args.rows, replace=False)]
    mean = benign.mean(axis=0)
    # A floor on std: a feature that is almost constant in benign traffic (a rare flag) should
    # make a large but bounded z when it moves, not an infinite one.
    std = np.maximum(benign.std(axis=0), 0.05)
    f = X.shape[1]

    names = meta['features']
    groups = [[1.0 if n in members else 0.0 for n in names] for members in meta['groups'].values()]
    assert all(sum(col) == 1 for col in zip(*groups)), 'every feature must be in exactly one group'
    suspicious_high = [0.0 if n in meta['notSuspiciousWhenHigh'] else 1.0 for n in names]
    model = Model(mean, std, f, args.hidden, args.code, groups, suspicious_high)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = torch.tensor(benign, dtype=torch.float32)
    batch = 512
    for epoch in range(args.epochs):
        perm = torch.randperm(len(data))
        total = 0.0
        for i in range(0, len(data), batch):
            xb = data[perm[i:i + batch]]
            loss = model.errors(xb).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
        for g in opt.param_groups:
            g['lr'] *= 0.8
        print(f'epoch {epoch + 1}: loss {total / len(data):.4f}', flush=True)

    model.eval()
    with torch.no_grad():
        model.scale.copy_(model.errors(data).mean(dim=0) + 1e-3)
        # Tail knots from the benign training rows.
        q = np.quantile(benign, LEVELS, axis=0).T  # [F, K]
        t = -np.log(np.maximum(1 - LEVELS, 1e-4))
        lo, hi = q[:, :-1], q[:, 1:]
        width = hi - lo
        flat = width <= 1e-9
        model.lo.copy_(torch.tensor(lo, dtype=torch.float32))
        model.width.copy_(torch.tensor(np.where(flat, 1.0, width), dtype=torch.float32))
        model.top.copy_(torch.tensor(q[:, -1], dtype=torch.float32))
        model.rise.copy_(torch.tensor(np.where(flat, 0.0, np.diff(t)[None, :].repeat(f, 0)), dtype=torch.float32))
        ae_v, tail_v = model.terms(torch.tensor(Xv, dtype=torch.float32))
        gae_v = model.group_max(ae_v).sum(dim=1).numpy()
        gtail_v = model.group_max(tail_v).sum(dim=1).numpy()
        max_v = tail_v.max(dim=1).values.numpy()
    calib = (yv == 0) & (hv >= WARMUP_HOURS)
    sd_ae = float(np.std(gae_v[calib]))
    sd_tail = float(np.std(gtail_v[calib]))
    sd_max = float(np.std(max_v[calib]))
    model.w_ae.fill_(1 / sd_ae)
    model.w_tail.fill_(1 / sd_tail)
    model.w_max.fill_(W_MAX / sd_max)
    raw_v = gae_v / sd_ae + gtail_v / sd_tail + W_MAX * max_v / sd_max
    centre = float(np.median(raw_v[calib]))
    model.centre.fill_(centre)
    raw_v = raw_v - centre
    q99, q999 = np.quantile(raw_v[calib], [0.99, 0.999])
    # score = 0.5 at the benign p99 (1 % FPR, the flag threshold) and 0.9 at the benign p99.9
    # (0.1 % FPR), so that a policy's `risk.score > 0.9` reads "rarer than 1 benign request in
    # 1,000" whatever the model's raw scale.
    a = math.log(9) / max(q999 - q99, 1e-3)
    model.a.fill_(a)
    model.b.fill_(float(q99))
    score_v = 1 / (1 + np.exp(-a * (raw_v - q99)))
    thr_1 = float(np.quantile(score_v[calib], 0.99))
    thr_01 = float(np.quantile(score_v[calib], 0.999))

    families = meta['families']
    val_figures = {}
    for k, fam in enumerate(families):
        s = score_v[(yv == k + 1) & (hv >= WARMUP_HOURS)]
        if len(s) == 0:
            continue
        val_figures[fam] = {'rows': int(len(s)), 'tpr_at_1pct_fpr': float((s > thr_1).mean()), 'tpr_at_0_1pct_fpr': float((s > thr_01).mean())}
        print(fam, val_figures[fam], flush=True)

    dummy = torch.zeros(2, f, dtype=torch.float32)
    torch.onnx.export(
        model, dummy, args.out,
        input_names=['features'], output_names=['score', 'contributions'],
        dynamic_axes={'features': {0: 'N'}, 'score': {0: 'N'}, 'contributions': {0: 'N'}},
        opset_version=13,
    )
    partial = {
        'featureSpecHash': meta['featureSpecHash'],
        'features': meta['features'],
        'normalisation': {
            'where': 'in the ONNX graph: z = clip((x - mean) / std, -%g, %g)' % (CLIP, CLIP),
            'mean': [round(float(v), 6) for v in mean],
            'std': [round(float(v), 6) for v in std],
        },
        'model': {
            'type': 'autoencoder (%d → %d → %d → %d → %d, tanh) + per-feature benign upper-tail surprise, fitted on benign rows only' % (f, args.hidden, args.code, args.hidden, f),
            'score': 'sigmoid(a * (sum_g max_{f in g} ae_f / sdAe + sum_g max_{f in g} tail_f / sdTail + %g * max_f tail_f / sdMax - centre - b)), ae_f = ln(1 + sq. reconstruction error_f / scale_f), g over the feature groups' % W_MAX,
            'a': a, 'b': float(q99), 'centre': centre, 'sdAe': sd_ae, 'sdTail': sd_tail, 'sdMax': sd_max, 'tailLevels': LEVELS.tolist(),
            'groups': meta['groups'],
            'contributions': 'c_f / sum_f c_f, c_f = ae_f / sdAe + tail_f / sdTail',
            'seed': args.seed, 'epochs': args.epochs, 'trainingRows': int(len(data)),
        },
        'thresholds': {
            'flag': thr_1,
            'flagFpr': 0.01,
            'strict': thr_01,
            'strictFpr': 0.001,
            'chosenOn': 'benign rows of the validation trace',
        },
        'validation': val_figures,
        'trainCpuSeconds': round(time.process_time() - started, 1),
    }
    with open(args.meta_out, 'w') as fh:
        json.dump(partial, fh, indent=2)
    print(json.dumps({'thresholds': partial['thresholds'], 'cpu_s': partial['trainCpuSeconds']}))


if __name__ == '__main__':
    main()
