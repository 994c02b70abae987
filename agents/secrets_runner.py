"""The detect-secrets runner: scans exactly the files named on its command line and prints one JSON report.

The worker never imports this module: it runs it as a program (``python -I agents/secrets_runner.py FILE...``) in a
child process with a clean environment, a time limit and a bound on its output, so a file that makes a pattern
slow can only time the scan out. Isolated mode (``-I``) keeps the scanned directory off ``sys.path``.

Every plugin of detect-secrets is on, with its default filters but one: the scanned code's own suppressions
(``# pragma: allowlist secret``) do not count. No configuration or baseline is read from the scanned tree: the
settings are built here, and only the named files are opened. A file that is not UTF-8 text is listed in
``unreadable`` (the worker fails the scan: a file that was not scanned proves nothing).

Output: ``{"results": [{"file", "line", "type", "plugin"}], "unreadable": [{"file", "reason"}]}``. The secret
itself is never printed.
"""

from __future__ import annotations

import json
import sys
from typing import Any

ALLOWLIST_FILTER = "detect_secrets.filters.allowlist.is_line_allowlisted"


def main(files: list[str]) -> dict[str, Any]:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.core.scan import scan_file
    from detect_secrets.settings import default_settings, get_settings

    results: list[dict[str, Any]] = []
    unreadable: list[dict[str, str]] = []
    with default_settings():
        get_settings().disable_filters(ALLOWLIST_FILTER)
        mapping: dict[str, Any] = dict(get_mapping_from_secret_type_to_class())
        plugins: dict[str, str] = {kind: plugin.__name__ for kind, plugin in mapping.items()}
        for name in files:
            try:
                with open(name, encoding="utf-8") as handle:
                    handle.read()
            except (OSError, UnicodeDecodeError) as err:
                unreadable.append({"file": name, "reason": str(err)[:300]})
                continue
            for secret in scan_file(name):
                results.append(
                    {
                        "file": name,
                        "line": secret.line_number,
                        "type": secret.type,
                        "plugin": plugins.get(secret.type, secret.type),
                    }
                )
    return {"results": results, "unreadable": unreadable}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
