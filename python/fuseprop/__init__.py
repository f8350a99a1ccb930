"""fuseprop: fast backpropagation for dense networks on NumPy arrays."""
from . import _C
__version__ = _C.__version__
