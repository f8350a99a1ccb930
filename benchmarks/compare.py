"""The side-by-side table of fuseprop vs NumPy vs PyTorch: `python benchmarks/compare.py [--quick]
[--only gemm|linear|train] [--png ratios.png]`, the same as `python -m fuseprop bench`."""
from fuseprop.bench.compare import main

if __name__ == "__main__":
    main()
