"""The side-by-side table of fuseprop vs NumPy, PyTorch eager, torch.compile and JAX jit, each library
in its own process: `python benchmarks/compare.py [--quick] [--only gemm|linear|train | --case NAME]
[--threads N] [--peers numpy,torch,torch.compile,jax] [--markdown] [--png ratios.png]`, the same as
`python -m fuseprop bench`."""
from fuseprop.bench.compare import main

if __name__ == "__main__":
    main()
