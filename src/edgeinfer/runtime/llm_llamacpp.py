"""GGUF models through llama-cpp-python's low-level API: the math for the LLM loop, nothing more.

The continuous-batching loop (serving/llm_loop.py) decides what runs; this backend turns a list
of (sequence, tokens, first position, want logits) items into ONE `llama_decode` call and returns
the requested logits rows. Sequences live in one unified KV cache (`kv_unified`), so prefill
chunks and single decode tokens of different sequences share a batch and the weights are read
once per step. Weights are mmapped (never `Llama(lora_path=...)`, which turns mmap off).

Not thread-safe: the loop runs one `decode` at a time and calls `free` only between decodes.
`tokenize`, `piece` and `chat_tokens` only read the vocabulary and may run beside a decode.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.config import LlmOptions, ModelConfig
from edgeinfer.errors import BackendError, InvalidInput, LoadError
from edgeinfer.hardware.contention import ThreadGovernor
from edgeinfer.runtime.chat_format import chat_format
from edgeinfer.runtime.chat_template import ChatTemplate, Vocab
from edgeinfer.runtime.llm_backends import load as load_cpu_backend
from edgeinfer.runtime.llm_probe import extra_buffer_types
from edgeinfer.runtime.llm_types import BatchItem
from edgeinfer.types import TensorSpec

log = logging.getLogger("edgeinfer.llm")

MODEL_FILE = "model.gguf"
_KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}  # GGML_TYPE_*


_lib: Any = None
_log_callback: Any = None  # ctypes keeps only a weak hold on callbacks: keep it referenced


def _llama() -> Any:
    """Import llama_cpp once, with llama.cpp's logging routed to Python's."""
    global _lib, _log_callback
    if _lib is None:
        try:
            import llama_cpp
        except ImportError as e:
            raise LoadError(
                "llama.cpp models need llama-cpp-python: pip install -e '.[llm]'"
            ) from e

        @llama_cpp.llama_log_callback
        def forward(level: int, text: bytes, _user: Any) -> None:
            if level == 4:  # GGML_LOG_LEVEL_ERROR; info and warnings are chatty at load
                log.error("llama.cpp: %s", text.decode(errors="replace").rstrip())

        _log_callback = forward
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        load_cpu_backend(llama_cpp)  # a portable build's CPU variants (GGML_BACKEND_DL)
        llama_cpp.llama_backend_init()
        _lib = llama_cpp
    return _lib


def _meta(lib: Any, model: Any, key: str) -> str | None:
    size = 1 << 16
    buf = ctypes.create_string_buffer(size)
    n = lib.llama_model_meta_val_str(model, key.encode(), buf, size)
    if n < 0:
        return None
    if n >= size:  # a long chat template: ask again with room for it
        buf = ctypes.create_string_buffer(n + 1)
        lib.llama_model_meta_val_str(model, key.encode(), buf, n + 1)
    return buf.value.decode("utf-8", errors="replace")


class LlamaCppModel:
    """One GGUF model and one llama.cpp context with `slots` sequences."""

    platform = "llama.cpp"
    # Triton's generate extension names: a prompt in, text out.
    inputs: tuple[TensorSpec, ...] = (TensorSpec("text_input", "BYTES", (1,)),)
    outputs: tuple[TensorSpec, ...] = (TensorSpec("text_output", "BYTES", (1,)),)

    def __init__(
        self, path: Path, options: LlmOptions, threads: int, threads_batch: int = 0
    ) -> None:
        lib = self._lib = _llama()
        self.options = options
        self.threads = threads
        self.threads_batch = threads_batch or threads
        self._governor: ThreadGovernor | None = None
        if options.adaptive_threads and max(threads, self.threads_batch) > 1:
            self._governor = ThreadGovernor(max(threads, self.threads_batch))
        self._n_threads = (self.threads, self.threads_batch)  # set on the context
        mparams = lib.llama_model_default_params()
        mparams.load_mode = lib.LLAMA_LOAD_MODE_MMAP  # not "auto", which may pick direct I/O
        mparams.n_gpu_layers = 0
        # Off where llama.cpp's AMX/repack kernels kill the process (SIGILL): see llm_probe.
        mparams.use_extra_bufts = extra_buffer_types(options.extra_buffer_types)
        model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise LoadError(f"{path}: llama.cpp could not load this GGUF file")
        self._model = model
        self._ctx = None
        self._adapters: set[int] = set()  # live LoRA handles; the model frees them with itself
        self._chat: ChatTemplate | None = None  # compiled on first use
        self._chat_lock = threading.Lock()
        self._grammar_tokenizer: Any = None  # llguidance's view of the vocabulary, on first use
        self._grammar_lock = threading.Lock()
        try:
            self._read_facts(model)
            self.chat_format = chat_format(
                options.chat_template, _meta(lib, model, "tokenizer.chat_template")
            )
            self.chat_template = self.chat_format.template
            self.name = _meta(lib, model, "general.name") or path.parent.parent.name
            self._pieces = [self._piece(t) for t in range(self.n_vocab)]
            # No token stands for more bytes: a prompt longer than context_length times this
            # is refused before it is tokenized.
            self.max_token_bytes = max(1, max(map(len, self._pieces), default=1))
            # Read here, off the event loop: a pass over the vocabulary (0.4 s at 262k tokens).
            self._controls = self._control_tokens()
            self._ctx = self._new_context()
            self.kv_cells = int(lib.llama_n_ctx(self._ctx))
            self._mem = lib.llama_get_memory(self._ctx)
            self._init_batch(options.n_batch)
        except BaseException:
            self.close()
            raise
        if options.context_length > self.n_ctx_train:
            log.warning(
                "%s: context_length %d exceeds the %d tokens it was trained on",
                path,
                options.context_length,
                self.n_ctx_train,
            )

    def _read_facts(self, model: Any) -> None:
        """The model's vocabulary and shape facts the loop and the cache need."""
        lib = self._lib
        self._vocab = lib.llama_model_get_vocab(model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(model))
        self.n_swa = int(lib.llama_model_n_swa(model))  # 0: no sliding-window layers
        # A recurrent state holds the whole sequence: no prefix of it can be copied.
        self._recurrent = bool(
            lib.llama_model_is_recurrent(model) or lib.llama_model_is_hybrid(model)
        )
        self.bos = int(lib.llama_vocab_bos(self._vocab))
        self.eos = int(lib.llama_vocab_eos(self._vocab))
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab))
        self.eog = frozenset(
            t for t in range(self.n_vocab) if lib.llama_vocab_is_eog(self._vocab, t)
        )

    @classmethod
    def load(cls, version_dir: Path, config: ModelConfig) -> LlamaCppModel:
        path = version_dir / MODEL_FILE
        if not path.is_file():
            raise LoadError(f"{version_dir}: no {MODEL_FILE}")
        o = config.llm
        auto = 0
        if 0 in (o.n_threads, o.n_threads_batch):
            from edgeinfer.hardware import default_threads

            auto = default_threads()
        threads = o.n_threads or auto
        return cls(path, o, threads, o.n_threads_batch or threads)

    def _new_context(self) -> Any:
        lib, o = self._lib, self.options
        p = lib.llama_context_default_params()
        p.n_ctx = o.kv_cells
        p.n_batch = p.n_ubatch = o.n_batch
        p.n_seq_max = o.slots
        p.n_threads, p.n_threads_batch = self._n_threads
        p.type_k = p.type_v = _KV_TYPES[o.kv_cache_type]
        # Our decision, not LLAMA_FLASH_ATTN_TYPE_AUTO: on the CPU that one always enables it,
        # f32 caches included (see LlmOptions.flash_attn).
        p.flash_attn_type = (
            lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if o.flash else (lib.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        )
        p.kv_unified = True  # one pool of cells: any mix of prefill and decode in one ubatch
        p.no_perf = True
        ctx = lib.llama_init_from_model(self._model, p)
        if not ctx:
            raise LoadError("llama.cpp could not create a context (out of memory?)")
        return ctx

    def _init_batch(self, n: int) -> None:
        """A llama_batch whose arrays are numpy buffers we own, filled with vector writes."""
        lib = self._lib
        self.n_batch = n
        self._tok = np.zeros(n, np.int32)
        self._pos = np.zeros(n, np.int32)
        self._nsid = np.ones(n, np.int32)
        self._sid = np.zeros(n, np.int32)
        self._want = np.zeros(n, np.int8)
        i32p = ctypes.POINTER(ctypes.c_int32)
        base = self._sid.ctypes.data
        self._sid_ptrs = (i32p * n)(*(ctypes.cast(base + 4 * i, i32p) for i in range(n)))
        b = lib.llama_batch()
        b.token = self._tok.ctypes.data_as(i32p)
        b.embd = ctypes.POINTER(ctypes.c_float)()
        b.pos = self._pos.ctypes.data_as(i32p)
        b.n_seq_id = self._nsid.ctypes.data_as(i32p)
        b.seq_id = ctypes.cast(self._sid_ptrs, ctypes.POINTER(i32p))
        b.logits = self._want.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self._batch = b

    # ---- tokens and text -------------------------------------------------------------------
    def _piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (b"" for control tokens)."""
        return self._pieces[token] if 0 <= token < self.n_vocab else b""

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        """Token ids of `text`; with `parse_special`, special tokens written in the text
        (<|im_start|>) are parsed (a raw completion prompt may use them; chat content never)."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (ctypes.c_int32 * cap)()
        tok = self._lib.llama_tokenize
        n = tok(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (ctypes.c_int32 * cap)()
            n = tok(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def grammar_tokenizer(self) -> Any:
        """llguidance's tokenizer for this vocabulary (for constrained decoding), built on first
        use and kept: seconds at Gemma's 262k tokens, so call it off the event loop.

        As llguidance's `lltokenizer_from_vocab`, but from the pieces already read at load: that
        helper asks llama.cpp for every token's piece and attributes again (most of its time).
        Control tokens get a 0xFF prefix, which no grammar can produce."""
        with self._grammar_lock:
            if self._grammar_tokenizer is None:
                try:
                    from llguidance import LLTokenizer
                except ImportError as e:
                    raise LoadError(
                        "constrained decoding needs llguidance: pip install -e '.[llm]'"
                    ) from e
                lib, vocab = self._lib, self._vocab
                tokens = list(self._pieces)
                for t in range(self.n_vocab):
                    if lib.llama_vocab_is_control(vocab, t):
                        tokens[t] = b"\xff" + self._piece(t, special=True)
                tokenize = ctypes.cast(lib.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
                self._grammar_tokenizer = LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
                    tokens=tokens,
                    vocab_ptr=vocab,
                    tokenize_fptr=tokenize,
                    eos_token=self.eos,
                    slices=None,
                )
            return self._grammar_tokenizer

    def chat_tokens(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """Prompt tokens of a chat (and its tools), from the model's chat template; text the
        client sent is never parsed for special tokens (runtime/chat_template.py)."""
        return self._chat_template().tokens(messages, tools)

    def _chat_template(self) -> ChatTemplate:
        with self._chat_lock:
            if self._chat is None:
                from jinja2 import TemplateError

                vocab = Vocab(
                    lambda text, special: self.tokenize(text, False, special),
                    self._controls,
                    self.bos,
                    self.add_bos,
                    self.piece_text(self.bos),
                    self.piece_text(self.eos),
                )
                try:
                    self._chat = ChatTemplate(self.chat_template, vocab)
                except TemplateError as e:
                    raise InvalidInput(f"the model's chat template does not compile: {e}") from e
            return self._chat

    def _control_tokens(self) -> dict[str, int]:
        """Text -> id of every control (and unknown) token: the ones only a template writes."""
        lib = self._lib
        mask = lib.LLAMA_TOKEN_ATTR_CONTROL | lib.LLAMA_TOKEN_ATTR_UNKNOWN
        out: dict[str, int] = {}
        for t in range(self.n_vocab):
            if lib.llama_vocab_get_attr(self._vocab, t) & mask:
                text = lib.llama_vocab_get_text(self._vocab, t)
                if text:
                    out.setdefault(text.decode("utf-8", errors="replace"), t)
        return out

    def piece_text(self, token: int) -> str:
        """A token's text with control tokens spelled out (`<bos>`), for templates."""
        text = (
            self._lib.llama_vocab_get_text(self._vocab, token) if 0 <= token < self.n_vocab else b""
        )
        return (text or b"").decode("utf-8", errors="replace")

    # ---- math ------------------------------------------------------------------------------
    def decode(self, items: Sequence[BatchItem]) -> np.ndarray:
        """Run one llama_decode over every item; the logits rows of items that want them, in
        order, as float32 [n, n_vocab]."""
        n = sum(len(it.tokens) for it in items)
        if not 0 < n <= self.n_batch:
            raise BackendError(f"decode of {n} tokens (the batch holds 1..{self.n_batch})")
        rows: list[int] = []
        i = 0
        for seq, tokens, pos, want in items:
            k = len(tokens)
            self._tok[i : i + k] = tokens
            self._pos[i : i + k] = np.arange(pos, pos + k, dtype=np.int32)
            self._sid[i : i + k] = seq
            self._want[i : i + k] = 0
            if want:
                self._want[i + k - 1] = 1
                rows.append(i + k - 1)
            i += k
        self._batch.n_tokens = n
        if self._governor is not None:
            self._fit_threads(self._governor.threads())
        rc = self._lib.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise BackendError(
                f"llama_decode failed with code {rc}" + (" (no free KV cells)" if rc == 1 else "")
            )
        out = np.empty((len(rows), self.n_vocab), np.float32)
        for r, j in enumerate(rows):
            ptr = self._lib.llama_get_logits_ith(self._ctx, j)  # index in the batch, not row
            out[r] = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        return out

    def _fit_threads(self, allowed: int) -> None:
        """Use at most `allowed` threads (the governor's answer to CPU contention)."""
        want = (min(self.threads, allowed), min(self.threads_batch, allowed))
        if want != self._n_threads:
            self._lib.llama_set_n_threads(self._ctx, *want)
            log.info(
                "llama.cpp threads %s -> %s (CPU pressure %s%%)",
                self._n_threads,
                want,
                self._governor.pressure if self._governor else None,
            )
            self._n_threads = want

    @property
    def n_threads(self) -> tuple[int, int]:
        """(threads, batch threads) the context uses now."""
        return self._n_threads

    def free(self, seq: int) -> None:
        """Drop every KV cell of `seq`; its slot can start a new sequence at position 0."""
        self._lib.llama_memory_seq_rm(self._mem, seq, -1, -1)

    def keep(self, seq: int, n: int) -> int:
        """Keep the KV cells of positions [0, n) of `seq` and drop the rest, so the sequence
        continues at position n; returns n, or 0 (every cell dropped) when the cells the next
        token attends to are not all there: sliding-window layers let other sequences take
        cells outside a sequence's window (the check is llama-server's)."""
        lib, mem = self._lib, self._mem
        lo, hi = lib.llama_memory_seq_pos_min(mem, seq), lib.llama_memory_seq_pos_max(mem, seq)
        if n <= 0 or lo < 0 or hi < n - 1 or lo > max(0, n - self.n_swa if self.n_swa else 0):
            self.free(seq)
            return 0
        lib.llama_memory_seq_rm(mem, seq, n, -1)
        return n

    def copy(self, src: int, dst: int, p0: int, p1: int) -> bool:
        """Give `dst` (which holds positions [0, p0)) the KV cells of positions [p0, p1) of
        `src`: llama_memory_seq_cp, which in the unified cache adds `dst` to the same cells
        (no data moves, no cell is used). False, copying nothing, when `src` lost cells that
        position p1 attends to (sliding-window layers, as in `keep`) or the model keeps a
        recurrent state."""
        lib, mem = self._lib, self._mem
        lo, hi = lib.llama_memory_seq_pos_min(mem, src), lib.llama_memory_seq_pos_max(mem, src)
        floor = max(p0, p1 - self.n_swa) if self.n_swa else p0
        if self._recurrent or not 0 <= p0 < p1 or lo < 0 or hi < p1 - 1 or lo > floor:
            return False
        lib.llama_memory_seq_cp(mem, src, dst, p0, p1)
        return True

    # ---- LoRA adapters: llama.cpp applies them per context; call from the engine thread ----
    def load_adapter(self, path: Path) -> Any:
        """Load a GGUF LoRA for this model (the model stays mmapped); an opaque handle."""
        handle = self._lib.llama_adapter_lora_init(self._model, str(path).encode())
        if not handle:
            raise LoadError(
                f"{path}: llama.cpp could not load this LoRA adapter (not a GGUF "
                "LoRA for this model's architecture and shapes?)"
            )
        self._adapters.add(ctypes.addressof(handle.contents))
        return handle

    def set_adapter(self, handle: Any, scale: float = 1.0) -> None:
        """Apply `handle` (None: the base model) to every following decode."""
        lib = self._lib
        if handle is None:
            rc = lib.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            arr = (lib.llama_adapter_lora_p_ctypes * 1)(handle)
            rc = lib.llama_set_adapters_lora(self._ctx, arr, 1, (ctypes.c_float * 1)(scale))
        if rc != 0:
            raise BackendError(f"llama_set_adapters_lora failed with code {rc}")

    def free_adapter(self, handle: Any) -> None:
        """Free an adapter no context uses any more (set another adapter first)."""
        key = ctypes.addressof(handle.contents)
        if key in self._adapters and self._model is not None:
            self._adapters.discard(key)
            self._lib.llama_adapter_lora_free(handle)

    # ---- the Model protocol ----------------------------------------------------------------
    def run(
        self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        raise InvalidInput(
            "this is a generative model: use /v1/completions, "
            "/v1/chat/completions or /v2/models/{m}/generate"
        )

    def warmup(self) -> None:
        """A one-token generation: touches every weight page and the compute buffers."""
        self.decode([BatchItem(0, [self.bos], 0, True)])
        self.free(0)

    def close(self) -> None:
        lib = self._lib
        if self._ctx is not None:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            self._adapters.clear()  # llama_model_free frees them: never free them again
            lib.llama_model_free(self._model)
            self._model = None


def load_instances(path: Path, config: ModelConfig) -> list[LlamaCppModel]:
    """The backend entry point (runtime.BACKENDS): one model, one context with `slots`
    sequences; concurrency comes from the slots, not from instances."""
    if config.instance_count != 1:
        raise LoadError(
            f"model {config.name}: llama.cpp models run one context; use [llm] "
            "slots for concurrency and leave instance_count at 1"
        )
    return [LlamaCppModel.load(path.parent, config)]
