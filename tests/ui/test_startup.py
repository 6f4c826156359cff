"""`abi dash` paints its first frame without the heavy imports (llama.cpp, chromadb,
huggingface_hub, plotext, aiohttp): the server runs in a child process, and the panes load theirs
after the frame. The time itself is measured by benchmarks/dash_startup.py, not here."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("llama_cpp", "chromadb", "huggingface_hub", "plotext", "numpy", "aiohttp", "abi_tui.server.app")

SCRIPT = textwrap.dedent("""
    import json, sys
    from abi_tui.cli import build_parser
    build_parser()
    from abi_tui.app import AbiApp
    from abi_tui.config import load_settings

    HEAVY = {heavy!r}
    seen = {{}}

    class FirstFrame(AbiApp):
        def on_mount(self):
            super().on_mount()
            self.call_after_refresh(self.first_frame)

        def first_frame(self):
            seen["before"] = [m for m in HEAVY if m in sys.modules]
            self.exit()

    # --connect mode: with the embedded server, its thread (started right after the first
    # frame, by design) would race this check.
    app = FirstFrame(load_settings(), url="http://127.0.0.1:9")
    app.run(headless=True, size=(120, 34))
    print(json.dumps(seen))
""")


def test_first_frame_needs_no_heavy_imports(abi_home):
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(heavy=HEAVY)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["before"] == [], f"imported before the first frame: {seen['before']}"
