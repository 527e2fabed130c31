"""Entry point: `gunicorn app:app` (and `flask --app app ...`).

A configuration error stops start-up with one line naming the variable, exit status 2.
"""

import sys

from improvmx_archive import create_app
from improvmx_archive.config import ConfigError

try:
    app = create_app()
except ConfigError as error:
    print(f"improvmx-webhook: configuration error: {error}", file=sys.stderr)
    sys.exit(2)
