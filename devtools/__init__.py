"""Development and test helpers (never imported by the application).

They start real processes (SecantusDB, gunicorn) on loopback so tests, benchmarks and the
development server share one way of doing it.
"""
