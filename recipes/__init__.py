"""Shipped recipes. They are runnable files (`lightning run recipes/rn50x4.py`), not modules to
import; this file only lets them install with clipl as `clipl._recipes`, so `clipl recipes`,
`clipl cp` and `lightning run rn50x4` find them from any folder."""
