"""The studio: a local web page over the project's runs, corpora, evaluations and models (docs/STUDIO.md).

    python scripts/studio.py [--host 127.0.0.1] [--port 7860] [--root .]

It binds to 127.0.0.1 by default (no login there). Binding to another interface needs a token
(--token or STUDIO_TOKEN): the page then asks for user ``studio`` and that token. The host and port default to
STUDIO_HOST and STUDIO_PORT. Needs requirements-studio.txt (``make studio`` installs it).
"""
from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.cli_values import positive_int  # noqa: E402
from utils.common.errors import UserError, run_cli  # noqa: E402

LOCAL = ("127.0.0.1", "localhost", "::1")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("STUDIO_HOST") or "127.0.0.1",
                        help="interface to bind (default STUDIO_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=positive_int("--port"), default=os.environ.get("STUDIO_PORT") or 7860,
                        help="port (default STUDIO_PORT or 7860)")
    parser.add_argument("--root", default=".", help="project root: its checkpoints/ and data/sft_processed/")
    parser.add_argument("--checkpoints", help="where runs are (default <root>/checkpoints)")
    parser.add_argument("--data", help="where prepared corpora are (default <root>/data/sft_processed)")
    parser.add_argument("--token", default=os.environ.get("STUDIO_TOKEN"),
                        help="password for user 'studio'; required when --host is not local (or STUDIO_TOKEN)")
    return parser.parse_args(argv)


def auth_for(host: str, token: str | None) -> tuple[str, str] | None:
    """None on a loopback interface; elsewhere the token is required."""
    try:
        local = host in LOCAL or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if local:
        return ("studio", token) if token else None
    if not token:
        raise UserError(f"--host {host}: not a local interface; anyone who reaches it could start runs, so set "
                        "a token (--token or STUDIO_TOKEN) or bind 127.0.0.1")
    return ("studio", token)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    port = int(args.port)
    auth = auth_for(args.host, args.token)
    if importlib.util.find_spec("gradio") is None:
        raise UserError("gradio is not installed; run `make studio` (it installs requirements-studio.txt)")
    root = Path(args.root).resolve()
    if not root.is_dir():
        raise UserError(f"--root {args.root}: not a directory")
    from utils.studio.app import Studio, build_app

    studio = Studio(root, Path(args.checkpoints) if args.checkpoints else None,
                    Path(args.data) if args.data else None, python=sys.executable)
    app = build_app(studio)
    # the tabs load tokenizers and models; importing transformers now keeps the first clicks quick
    import transformers  # noqa: F401
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"studio: http://{shown}:{port}  (runs {studio.checkpoints}, corpora {studio.data}; Ctrl-C stops the "
          "page, not the runs it started)", flush=True)
    app.queue(default_concurrency_limit=4).launch(
        server_name=args.host, server_port=port, auth=auth, quiet=True, show_error=False,
        allowed_paths=[str(studio.checkpoints), str(studio.data)], footer_links=[], mcp_server=False)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
