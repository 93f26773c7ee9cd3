"""Lightning callbacks over clipl.eval (installed as clipl.callbacks)."""
