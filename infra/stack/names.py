"""Stack names: the one definition every entry point checks a `--stack` against.

A stack name lands in stacks/Pulumi.<name>.yaml, resource names, SSM paths and the hosts'
scripts, so it is checked before any of those: Pulumi's characters (letters, digits, '_', '.',
'-', at most 100), never a leading '.' (so never '.' or '..' as a file name part). The CLI also
takes Pulumi's qualified forms ORG/NAME and ORG/PROJECT/NAME, each part the same shape.
"""

from __future__ import annotations

import re

_PART = r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}"
# Use fullmatch: `$` alone also matches before a trailing newline ("dev\n").
STACK_NAME_RE = re.compile(_PART)
# NAME, ORG/NAME or ORG/PROJECT/NAME (whether PROJECT is this project is infra.stack.files' check).
STACK_REF_RE = re.compile(rf"(?:{_PART}/){{0,2}}{_PART}")
STACK_NAME_ALLOWED = "1-100 letters, digits, '_', '.' and '-', not starting with '.' (Pulumi's stack names)"
