"""`mediflow keys new NAME`: a strong API key and the line that configures it."""

from __future__ import annotations

import argparse
import secrets

# 32 random bytes (256 bits), URL-safe base64: 43 characters, well above the 16 the server requires.
KEY_BYTES = 32


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("keys", help="make API keys for `mediflow serve`",
                       description="API keys identify callers of /api/* (the name is recorded in reviews and the "
                                   "audit log); docs/clinical.md says how the server reads them.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="print a new random key for NAME and the line to add")
    new.add_argument("name", help="who the key is for, e.g. dr_lee (letters, digits, space and . _ @ -)")
    return p


def new_key() -> str:
    """A random key from the operating system's cryptographic generator."""
    return secrets.token_urlsafe(KEY_BYTES)


def run(args: argparse.Namespace) -> int:
    from mediflow.errors import MediFlowError
    from mediflow.serving.auth import ApiKeyError, parse_keys

    key = new_key()
    line = f"{args.name.strip()}:{key}"
    try:
        parse_keys(line, "NAME", separator="\n")  # the same checks the server makes on the line
    except ApiKeyError as exc:
        raise MediFlowError(str(exc).partition(": ")[2]) from None
    print(f"New API key for {args.name.strip()!r} (shown once; keep it secret, give it only to its owner):")
    print(f"  {key}")
    print("Add this line to the keys file (mediflow serve --api-keys-file FILE, or MEDIFLOW_API_KEYS_FILE):")
    print(f"  {line}")
    print("or append it, comma-separated, to MEDIFLOW_API_KEYS; then restart the server.")
    return 0
