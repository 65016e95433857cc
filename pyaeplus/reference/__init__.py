"""Pure-PyTorch implementations of every op: the specification, the test oracle and the
last-resort fallback (backend ``"torch"``). Names match the public functional API."""
