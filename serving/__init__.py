"""Production serving of promoted bundles (BentoML under the sandbox, Prometheus metrics).

Only bundles that an evaluator approved and an operator promoted, unchanged, are served from here.
"""
