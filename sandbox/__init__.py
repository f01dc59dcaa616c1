"""Isolated execution of untrusted bundles: safe import of `.bento` archives, the bubblewrap sandbox, the runner
that streams requests to it, and the executors that place a job (a Ray task, or inline for tests).

This room knows nothing of pilots or evaluation: a `SandboxJob` carries its own inputs, limits and resources."""
