"""Side effects, one module per outside system, and the contracts workflows exchange with them."""
