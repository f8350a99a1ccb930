"""fuseprop.sklearn against scikit-learn's MLP: the same estimator settings on the same splits, each fit in a
process of its own (thread pools in one process stall each other), the libraries interleaved seed by seed.
Prints, per dataset, the test score (mean +- std over seeds), the median fit time and the speed-up.

    python benchmarks/sklearn_compare.py [--seeds 5] [--fashion-seeds 2] [--only digits,fashion-mnist]
                                         [--threads N] [--markdown]

Datasets: scikit-learn's load_digits, load_breast_cancer, load_diabetes (features standardised), and
Fashion-MNIST (fuseprop.datasets.load_fashion_mnist: pixels / 255; a 256-128 network for a few epochs).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# name: (kind, estimator settings both libraries get)
DATASETS = {
    "digits": ("classifier", dict(hidden_layer_sizes=(100,))),
    "breast_cancer": ("classifier", dict(hidden_layer_sizes=(100,))),
    "diabetes": ("regressor", dict(hidden_layer_sizes=(100,), learning_rate_init=0.01, max_iter=1000)),
    "fashion-mnist": ("classifier", dict(hidden_layer_sizes=(256, 128), max_iter=5)),
}


def load(name, seed):
    """(X_train, X_test, y_train, y_test) as float64, the split drawn from seed (Fashion-MNIST: its own)."""
    import numpy as np
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    if name == "fashion-mnist":
        from fuseprop.datasets import load_fashion_mnist
        (x_tr, y_tr), (x_te, y_te) = load_fashion_mnist()
        return (x_tr.reshape(len(x_tr), -1) / 255.0, x_te.reshape(len(x_te), -1) / 255.0, y_tr.astype(np.int64),
                y_te.astype(np.int64))
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, random_state=seed)
    scaler = StandardScaler().fit(X_tr)
    return scaler.transform(X_tr), scaler.transform(X_te), y_tr, y_te


def worker(lib, name, seed):
    """One fit in this process: prints {"score", "fit_s", "n_iter"} as JSON."""
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    if lib == "fuseprop":
        from fuseprop import sklearn as module
    else:
        from sklearn import neural_network as module
    kind, settings = DATASETS[name]
    cls = module.MLPClassifier if kind == "classifier" else module.MLPRegressor
    X_tr, X_te, y_tr, y_te = load(name, seed)
    est = cls(random_state=seed, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # Fashion-MNIST runs a fixed few epochs on purpose
        start = time.perf_counter()
        est.fit(X_tr, y_tr)
        fit_s = time.perf_counter() - start
    print(json.dumps({"score": est.score(X_te, y_te), "fit_s": fit_s, "n_iter": est.n_iter_}))


def run(lib, name, seed, threads):
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    out = subprocess.run([sys.executable, __file__, "--worker", lib, name, str(seed)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--fashion-seeds", type=int, default=2)
    ap.add_argument("--only", default=",".join(DATASETS))
    ap.add_argument("--threads", type=int, default=0, help="threads per process for both libraries (0: their default)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--worker", nargs=3, metavar=("LIB", "DATASET", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], int(args.worker[2]))
        return
    rows = []
    for name in args.only.split(","):
        seeds = range(args.fashion_seeds if name == "fashion-mnist" else args.seeds)
        results = {"sklearn": [], "fuseprop": []}
        for seed in seeds:  # interleaved: a slow moment of the machine hits both
            for lib in results:
                results[lib].append(run(lib, name, seed, args.threads))
        rows.append((name, results))
        print(f"{name}: " + "; ".join(f"{lib} " + ", ".join(f"{r['score']:.4f}/{r['fit_s']:.2f}s/{r['n_iter']}it"
                                                              for r in rs) for lib, rs in results.items()),
              file=sys.stderr)
    header = ("| dataset | score | scikit-learn | fuseprop | within 1 std | fit s scikit-learn | fit s fuseprop "
              "| speed-up |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for name, results in rows:
        stats = {}
        for lib, rs in results.items():
            scores = [r["score"] for r in rs]
            std = statistics.pstdev(scores) if len(scores) > 1 else 0.0
            stats[lib] = (statistics.mean(scores), std, statistics.median(r["fit_s"] for r in rs))
        (m_sk, s_sk, t_sk), (m_fp, s_fp, t_fp) = stats["sklearn"], stats["fuseprop"]
        metric = "R^2" if DATASETS[name][0] == "regressor" else "accuracy"
        # one seed has no spread to compare against: say so rather than "no"
        within = ("yes" if abs(m_fp - m_sk) <= max(s_sk, s_fp) else "no") if max(s_sk, s_fp) > 0 else "n/a (1 seed)"
        lines.append(f"| {name} ({len(results['sklearn'])} seeds) | {metric} | {m_sk:.4f} ± {s_sk:.4f} | "
                     f"{m_fp:.4f} ± {s_fp:.4f} | {within} | {t_sk:.2f} | {t_fp:.3f} | {t_sk / t_fp:.1f}x |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
