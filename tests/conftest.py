"""Test configuration: float64 enabled (for the float64 gradient checks)."""

import jax

# check_grads in float64 needs x64; every test states the dtypes it uses.
jax.config.update("jax_enable_x64", True)
