"""Command line.

``python -m fuseprop demo`` trains the classic 784-16-16-10 network on a generated, learnable
10-class problem and prints loss, accuracy and throughput per epoch.

``python -m fuseprop train`` trains an MLP on Fashion-MNIST (or MNIST, or any IDX files) with
fit(): by default 784-256-128-10 ReLU, AdamW (lr 2e-3, weight decay 1e-4) with a per-step cosine
schedule, label smoothing 0.1, batch 128, 20 epochs, inputs scaled to [0, 1] then standardised with
the training set's mean and std. It prints progress, the test accuracy and the throughput, and writes
a checkpoint and (with matplotlib) the training curves to --out. ``--model cnn`` trains a small
convolutional network instead (two 3x3 conv / batch norm / ReLU / 2x2 max pool blocks of 32 and 64
channels, a hidden Linear layer of 128, 8 epochs). ``--model lstm`` reads each image as a sequence of
its rows (28 steps of 28 pixels) with one LSTM layer of 128 and a Linear classifier on its last state,
trained by backpropagation through time (gradients clipped to norm 1).

``mpirun -n N python -m fuseprop train --distributed ...`` trains data-parallel on N processes
(fuseprop.distributed): --batch-size stays the global batch, so the run computes what one process
computes; rank 0 alone prints and writes --out.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import numpy as np

import fuseprop
from fuseprop import checkpoint, datasets, losses, nn, optim, training


def generated_digits(rng: np.random.Generator, n: int, noise: float = 1.0):
    """28x28 'images' of 10 classes: a smooth random template per class plus pixel noise.

    Templates come from the first 10 draws of a fixed generator, so train and test share them."""
    templates = np.random.default_rng(1234).normal(size=(10, 7, 7))
    templates = np.kron(templates, np.ones((4, 4)))  # blocky, image-like 28x28 patterns
    labels = rng.integers(0, 10, size=n)
    images = templates[labels] + noise * rng.normal(size=(n, 28, 28))
    return images.reshape(n, 784).astype(np.float32), labels


def demo(args) -> int:
    fuseprop.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    x_train, y_train = generated_digits(rng, args.train_size, args.noise)
    x_test, y_test = generated_digits(rng, args.test_size, args.noise)
    sizes = [784] + args.hidden + [10]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    loss_fn = losses.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=args.lr)
    info = fuseprop.build_info()
    print(f"fuseprop {info['version']} ({info['compiler']}, {info['arch']}, kernels: {info['kernel_level']}, "
          f"{info['cuda_status']})")
    print(f"network {'-'.join(map(str, sizes))}, {sum(p.size for p in model.parameters())} parameters; "
          f"{len(x_train)} training and {len(x_test)} test samples (generated); batch {args.batch_size}, Adam lr {args.lr}")
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        start, total, batches = time.perf_counter(), 0.0, 0
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            total += model.train_step(x_train[idx], y_train[idx], loss_fn, opt)
            batches += 1
        seconds = time.perf_counter() - start
        test_acc = float((model(x_test).argmax(1) == y_test).mean())
        print(f"epoch {epoch:2d}  loss {total / batches:.4f}  test accuracy {test_acc:.2%}  "
              f"{len(x_train) / seconds:,.0f} samples/s")
    final = float((model(x_test).argmax(1) == y_test).mean())
    print(f"final test accuracy {final:.2%}")
    return 0 if final > 0.5 else 1


_DATASETS = ("fashion-mnist", "mnist")
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU}


def load_data(args):
    """((x_train, y_train), (x_test, y_test)) as uint8 images and labels."""
    paths = (args.train_images, args.train_labels, args.test_images, args.test_labels)
    if any(paths):
        if not all(paths):
            raise SystemExit("--train-images, --train-labels, --test-images and --test-labels go together")
        xtr, ytr, xte, yte = map(datasets.read_idx, paths)
        return (xtr, ytr), (xte, yte)
    if args.dataset == "mnist":
        if not args.data:
            raise SystemExit("--dataset mnist needs --data DIR (the folder of the four MNIST IDX files)")
        return datasets.load_mnist(args.data)
    return datasets.load_fashion_mnist(args.data, download=args.download)


def build_mlp(sizes, activation: str, dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of the given widths with the activation (and Dropout) after each hidden one;
    He initialisation for ReLU-like activations, Xavier otherwise and for the output layer."""
    hidden_init = "he_uniform" if activation in ("relu", "leaky_relu", "gelu") else "xavier_uniform"
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layers.append(nn.Linear(a, b, init="xavier_uniform" if last else hidden_init))
        if not last:
            layers.append(_ACTIVATIONS[activation]())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def build_lstm(features: int, hidden: int, classes: int, dropout: float = 0.0) -> nn.Sequential:
    """LSTM(features, hidden) over the sequence, its last state (-> Dropout) -> Linear(classes)."""
    layers = [nn.LSTM(features, hidden)] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(*layers, nn.Linear(hidden, classes, init="xavier_uniform"))


def build_cnn(channels, hidden: int, classes: int, image_shape=(1, 28, 28), dropout: float = 0.0) -> nn.Sequential:
    """Conv 3x3 (padding 1) -> BatchNorm2d -> ReLU -> MaxPool 2x2 per entry of channels, then Flatten,
    Linear(hidden) -> ReLU (-> Dropout) -> Linear(classes)."""
    c, h, w = image_shape
    layers = []
    for out in channels:
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = out, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, hidden, init="he_uniform"), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, classes, init="xavier_uniform"))
    return nn.Sequential(*layers)


def train(args) -> int:
    if args.distributed:
        return _train_distributed(args)
    return _train(args, None)


def _train_distributed(args) -> int:
    """train() on every rank of MPI.COMM_WORLD. An error on one rank aborts the job, so that the other
    ranks do not wait for it until their timeout."""
    from fuseprop import distributed
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    try:
        if "OMP_NUM_THREADS" not in os.environ:
            fuseprop.set_num_threads(distributed.threads_per_rank(comm))
        return _train(args, comm)
    except BaseException as e:
        if comm.Get_size() == 1 or (isinstance(e, SystemExit) and not e.code):
            raise
        traceback.print_exc()
        print(f"rank {comm.Get_rank()} of {comm.Get_size()} failed; aborting the job", file=sys.stderr)
        sys.stderr.flush()
        comm.Abort(1)
        raise


def _train(args, comm) -> int:
    fuseprop.manual_seed(args.seed)
    main = comm is None or comm.Get_rank() == 0
    say = print if main else (lambda *a, **k: None)
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = load_data(args)
    image_shape = (1,) + x_train.shape[1:] if x_train.ndim == 3 else x_train.shape[1:]
    flat = args.model == "mlp"
    # mlp: flat vectors; cnn: (C, H, W) images; lstm: sequences of rows (H steps of C*W values)
    shape = {"mlp": (-1,), "cnn": image_shape, "lstm": (image_shape[1], image_shape[0] * image_shape[2])}[args.model]
    x_train = x_train.reshape((len(x_train),) + shape).astype(np.float32) / 255
    x_test = x_test.reshape((len(x_test),) + shape).astype(np.float32) / 255
    mean, std = float(x_train.mean()), float(x_train.std())
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    load_seconds = time.perf_counter() - start

    classes = int(y_train.max()) + 1
    if flat:
        sizes = [x_train.shape[1]] + args.hidden + [classes]
        model = build_mlp(sizes, args.activation, args.dropout)
        described = f"network {'-'.join(map(str, sizes))} {args.activation}"
    elif args.model == "lstm":
        sizes = {"steps": shape[0], "features": shape[1], "hidden": args.hidden[0] if args.hidden else 128}
        model = build_lstm(shape[1], sizes["hidden"], classes, args.dropout)
        described = (f"network lstm {shape[0]} steps x {shape[1]} -> lstm({sizes['hidden']}) last state -> {classes}")
    else:
        sizes = {"channels": args.channels, "hidden": args.hidden[0] if args.hidden else 128}
        model = build_cnn(args.channels, sizes["hidden"], classes, image_shape, args.dropout)
        described = (f"network cnn {'x'.join(map(str, image_shape))} -> "
                     f"{' -> '.join(f'conv3x3({c}) bn relu pool2' for c in args.channels)} -> {sizes['hidden']} -> {classes}")
    params = model.parameters()
    if args.optimizer == "sgd":
        opt = optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    else:
        opt = (optim.AdamW if args.optimizer == "adamw" else optim.Adam)(params, lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * -(-len(x_train) // args.batch_size)
    schedules = {"cosine": lambda: [training.CosineAnnealingLR(opt, steps, interval="step")],
                 "step": lambda: [training.StepLR(opt, max(1, args.epochs // 3), 0.1)], "none": lambda: []}
    loss_fn = losses.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    ddp = None
    if comm is not None:
        from fuseprop.distributed import DataParallel
        ddp = DataParallel(model, comm, timeout=args.timeout)
    say(f"{described}, {sum(p.size for p in params)} parameters; "
          f"{len(x_train)} training and {len(x_test)} test samples ({args.dataset if not args.train_images else 'IDX files'}, "
          f"loaded in {load_seconds:.1f} s); {args.optimizer} lr {args.lr} ({args.schedule}), batch {args.batch_size}"
          + (f" over {ddp.world_size} ranks, {fuseprop.get_num_threads()} thread(s) each" if ddp else ""))
    fit_start = time.perf_counter()
    history = model.fit(x_train, y_train, loss=loss_fn, optimizer=opt, epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=(x_test, y_test) if args.validate else None, callbacks=schedules[args.schedule](),
                        verbose=args.verbose, seed=args.seed, distributed=ddp or False,
                        clip_grad_norm=args.clip_grad_norm)
    fit_seconds = time.perf_counter() - fit_start
    result = (ddp or model).evaluate(x_test, y_test, loss=loss_fn)
    total = time.perf_counter() - start
    say(f"final test accuracy {result['accuracy']:.2%}  test loss {result['loss']:.4f}")
    how = (f"{ddp.world_size} ranks, {ddp.stats['comm_seconds'] / ddp.stats['step_seconds']:.0%} of rank 0's step time "
           "in communication" if ddp else f"fused native step: {history.params['fused']}")
    say(f"training {fit_seconds:.1f} s ({len(history.epoch) * len(x_train) / fit_seconds:,.0f} samples/s, "
        f"{how}); {total:.1f} s including loading and the test")
    if args.out and main:
        os.makedirs(args.out, exist_ok=True)
        checkpoint.save_checkpoint(os.path.join(args.out, "checkpoint." + checkpoint.default_format()), model, opt,
                                   extra={"mean": mean, "std": std, "model": args.model, "sizes": sizes,
                                          "activation": args.activation})
        try:
            from fuseprop.diagnostics import plot_history
            plot_history(history, os.path.join(args.out, "curves.png"))
        except ImportError as e:
            print(f"no curves: {e}")
        print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuseprop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train 784-16-16-10 on generated data")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, nargs="*", default=[16, 16], help="hidden layer widths")
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--test-size", type=int, default=5000)
    p.add_argument("--noise", type=float, default=10.0, help="pixel noise; larger is harder")
    p.add_argument("--seed", type=int, default=0)

    t = sub.add_parser("train", help="train an MLP, a CNN or an LSTM on Fashion-MNIST, MNIST or IDX files")
    t.add_argument("--dataset", choices=_DATASETS, default="fashion-mnist")
    t.add_argument("--data", metavar="DIR", help="folder of the four IDX files (default for fashion-mnist: "
                   "$FUSEPROP_DATA, /usr/share/datasets/fashion-mnist, the user cache)")
    t.add_argument("--download", action="store_true",
                   help="fetch Fashion-MNIST from its official source (checksums verified) when it is not found")
    for name in ("train-images", "train-labels", "test-images", "test-labels"):
        t.add_argument(f"--{name}", help="IDX file (optionally .gz), instead of --dataset")
    t.add_argument("--model", choices=["mlp", "cnn", "lstm"], default="mlp",
                   help="mlp: Linear layers of --hidden widths; cnn: a 3x3 conv (batch norm, ReLU, 2x2 max pool) per "
                   "--channels entry, then one hidden Linear layer of --hidden[0] (default 128); lstm: each image a "
                   "sequence of its rows into an LSTM of --hidden[0] (default 128), a Linear layer on its last state")
    t.add_argument("--hidden", type=int, nargs="*", default=None, help="hidden layer widths (mlp default: 256 128)")
    t.add_argument("--channels", type=int, nargs="+", default=[32, 64], help="cnn: output channels of each conv block")
    t.add_argument("--activation", choices=sorted(_ACTIVATIONS), default="relu")
    t.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="adamw")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--schedule", choices=["cosine", "step", "none"], default="cosine",
                   help="cosine: per step down to 0 over the run; step: x0.1 every third of the epochs")
    t.add_argument("--epochs", type=int, default=None, help="default: 20 (mlp), 8 (cnn, lstm)")
    t.add_argument("--clip-grad-norm", type=float, default=None,
                   help="clip the gradients to this global norm every step (default: 1 for lstm, none otherwise)")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--label-smoothing", type=float, default=0.1)
    t.add_argument("--dropout", type=float, default=0.0, help="after every hidden layer (leaves the fused step)")
    t.add_argument("--validate", action="store_true", help="report test loss and accuracy after every epoch")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2])
    t.add_argument("--out", help="folder for the checkpoint (model, optimizer, normalisation) and curves.png")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of mpirun (mpi4py); --batch-size is the global batch")
    t.add_argument("--timeout", type=float, default=None,
                   help="--distributed: seconds a rank waits for the others before it aborts the job "
                   "(default $FUSEPROP_DIST_TIMEOUT or 60)")

    sub.add_parser("bench", add_help=False,
                   help="the side-by-side speed table against NumPy, PyTorch, torch.compile and JAX (those installed)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":  # its options are fuseprop.bench.compare's own
        from fuseprop.bench.compare import main as bench
        bench(rest, prog="python -m fuseprop bench")
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "train":
        if args.hidden is None:
            args.hidden = [256, 128] if args.model == "mlp" else [128]
        if args.epochs is None:
            args.epochs = 20 if args.model == "mlp" else 8
        if args.clip_grad_norm is None and args.model == "lstm":
            args.clip_grad_norm = 1.0
    return demo(args) if args.command == "demo" else train(args)


if __name__ == "__main__":
    sys.exit(main())
