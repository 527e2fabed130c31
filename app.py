"""Entry point: `gunicorn app:app` (and `flask --app app ...`).

A configuration error stops start-up with one line naming the variable, exit status 2.
"""

import sys

from improvmx_archive import create_app
from improvmx_archive.config import EXIT_CONFIG_ERROR, ConfigError, error_line

try:
    app = create_app()
except ConfigError as error:
    print(error_line(error), file=sys.stderr)
    sys.exit(EXIT_CONFIG_ERROR)
