"""GGUF export: the merged HF model -> GGUF files for llama.cpp, Ollama and LM Studio, checked with a real client.

The conversion is llama.cpp's own: ``convert_hf_to_gguf.py`` with the ``gguf-py`` it ships (both from
``llama-cpp-python``'s source distribution, unpacked by ``make gguf`` into ``.venv/llama.cpp-<version>/``; run as
a subprocess, so its ``gguf-py`` never meets requirements.txt's ``gguf`` that utils/model/gguf.py imports). Then
llama.cpp's ``gguf_new_metadata.py`` writes the trained chat template (without ``{% generation %}`` marks, which
llama.cpp's own template engine does not know) and the end-of-turn token into the file.

The check (``check_gguf``): llama-cpp-python loads the file, renders each prompt with the chat template embedded in
it, and its greedy tokens are compared with transformers' on the exported HF model (float32 compute), prompt ids
first. An Ollama ``Modelfile`` goes beside the files.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from utils.common.errors import UserError
from utils.data.chat_jinja import without_generation_tags

GGUF_TYPES = ("f16", "bf16", "q8_0", "f32")
"""What ``--gguf`` writes: llama.cpp's converter output types (q8_0: 8-bit blocks, about half of f16)."""
EXACT_TYPES = ("f16", "bf16", "f32")
"""Types whose greedy tokens must equal transformers' (q8_0 rounds the weights: its agreement is reported)."""
CHECK_TOKENS = 16
DEFAULT_PROMPTS = ("What is 2 plus 3?", "Name three colours.", "Write one sentence about the sea.")
_REGISTER = re.compile(r"@ModelBase\.register\(([^)]*)\)")


def converter_dir() -> Path:
    """Where ``make gguf`` unpacked llama.cpp's converter (``LLAMA_CPP_DIR`` overrides)."""
    if os.environ.get("LLAMA_CPP_DIR"):
        path = Path(os.environ["LLAMA_CPP_DIR"])
    else:
        try:
            version = importlib.metadata.version("llama-cpp-python")
        except importlib.metadata.PackageNotFoundError:
            raise UserError("--gguf: llama-cpp-python is not installed; run `make gguf` (requirements-gguf.txt)") \
                from None
        path = Path(sys.prefix) / f"llama.cpp-{version}"
    if not (path / "convert_hf_to_gguf.py").is_file():
        raise UserError(f"--gguf: llama.cpp's converter not found in {path}; run `make gguf` (it unpacks "
                        "convert_hf_to_gguf.py from llama-cpp-python's source distribution)")
    return path


def convertible_architectures(llama_cpp: Path) -> set[str]:
    """The HF architectures the converter registers (``@ModelBase.register(...)`` in its ``conversion/``)."""
    names: set[str] = set()
    for source in sorted((llama_cpp / "conversion").glob("*.py")):
        for args in _REGISTER.findall(source.read_text(encoding="utf-8")):
            names.update(re.findall(r"[\"']([A-Za-z0-9_]+)[\"']", args))
    return names


def check_convertible(config, llama_cpp: Path) -> None:
    """Refuse, in one line naming the type, a model whose architecture llama.cpp's converter does not know."""
    archs = list(getattr(config, "architectures", None) or [])
    known = convertible_architectures(llama_cpp)
    if not archs or archs[0] not in known:
        name = archs[0] if archs else f"(none; model_type {getattr(config, 'model_type', '?')})"
        raise UserError(f"--gguf: llama.cpp's converter ({llama_cpp.name}) cannot convert architecture {name}; "
                        "export without --gguf (the HF export loads in transformers, vLLM and TGI)")


@dataclass
class GGUFFile:
    type: str
    path: Path
    size: int
    check: dict | None = None
    """``check_gguf``'s result."""


def convert(hf_dir: Path, out_file: Path, gguf_type: str, llama_cpp: Path, end_of_turn: int | None) -> GGUFFile:
    """``hf_dir`` -> ``out_file`` in ``gguf_type`` by llama.cpp's converter, then the metadata step
    (utils/checkpoint/gguf_metadata.py): the trained template, the end-of-turn token, the tokenizer settings."""
    raw = out_file.with_name(out_file.name + ".raw")
    spec_file = out_file.with_name(out_file.name + ".json")
    run_llama_cpp([str(llama_cpp / "convert_hf_to_gguf.py"), str(hf_dir), "--outfile", str(raw), "--outtype",
                   gguf_type, "--model-name", out_file.stem.rsplit("-", 1)[0]], "convert_hf_to_gguf.py", llama_cpp)
    spec_file.write_text(json.dumps(metadata_spec(hf_dir, end_of_turn)), encoding="utf-8")
    run_llama_cpp([str(Path(__file__).with_name("gguf_metadata.py")), str(raw), str(out_file), str(spec_file)],
                  "gguf_new_metadata (gguf_metadata.py)", llama_cpp)
    raw.unlink()
    spec_file.unlink()
    return GGUFFile(gguf_type, out_file, out_file.stat().st_size)


def metadata_spec(hf_dir: Path, end_of_turn: int | None) -> dict:
    """What utils/checkpoint/gguf_metadata.py writes into the converted file (its docstring says why)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    if not isinstance(tokenizer.chat_template, str):
        raise UserError(f"{hf_dir}: the export's tokenizer has no chat_template to put in the GGUF")
    template = without_generation_tags(tokenizer.chat_template)
    config = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    spec: dict = {"chat_template": template, "eot_token_id": end_of_turn}
    if _prepends_first(config.get("pre_tokenizer")):
        # transformers puts "▁" before the input's first word only; llama.cpp adds it after every special token
        # unless add_space_prefix is false, and then nowhere: a prompt that starts with text gets the space written
        spec["add_space_prefix"] = False
        probe = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                              add_generation_prompt=True)
        if not any(probe.startswith(t) for t in tokenizer.all_special_tokens):
            spec["chat_template"] = "{{- ' ' -}}" + template
    model = config.get("model") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback") and not (hf_dir / "tokenizer.model").is_file():
        spec["merge_scores"] = merge_scores(model)
    return spec


def _prepends_first(pre_tokenizer: dict | None) -> bool:
    if not pre_tokenizer:
        return False
    if pre_tokenizer.get("type") == "Sequence":
        return any(_prepends_first(p) for p in pre_tokenizer.get("pretokenizers", []))
    return pre_tokenizer.get("type") == "Metaspace" and pre_tokenizer.get("prepend_scheme") == "first"


def merge_scores(model: dict) -> dict[int, float]:
    """Token id -> score: minus the rank of the merge that makes it, below every merge for the rest."""
    vocab, merges = model["vocab"], model.get("merges") or []
    scores = {}
    for rank, merge in enumerate(merges):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        token_id = vocab.get(left + right)
        if token_id is not None and token_id not in scores:
            scores[token_id] = -float(rank)
    floor = -float(len(merges) + 1)
    return {**{token_id: floor for token_id in vocab.values() if token_id not in scores}, **scores}


def run_llama_cpp(argv: list[str], what: str, llama_cpp: Path) -> None:
    """A Python script of llama.cpp's (or gguf_metadata.py) with the converter's own gguf-py first on its path."""
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    env["PYTHONPATH"] = str(llama_cpp / "gguf-py")
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=str(llama_cpp))
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()] or ["(no output)"]
        errors = [ln for ln in lines if "error" in ln.lower()] or lines
        raise UserError(f"--gguf: llama.cpp's {what} failed (exit {proc.returncode}): {errors[-1].strip()[:300]}")


# ---------------------------------------------------------------------- the check with a real client
def check_conversations(prompts: list[str]) -> list[list[dict]]:
    """Three held-out prompts as conversations: one alone, one behind a system prompt, one as a second turn."""
    p = (list(prompts) + [q for q in DEFAULT_PROMPTS if q not in prompts])[:3]
    return [[{"role": "user", "content": p[0]}],
            [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": p[1]}],
            [{"role": "user", "content": p[0]}, {"role": "assistant", "content": "Here is my answer."},
             {"role": "user", "content": p[2]}]]


def hf_greedy(hf_dir: Path, conversations: list[list[dict]], stop_ids: list[int]) -> list[dict]:
    """Prompt ids and greedy tokens of the exported HF model, computed in float32 (its weights upcast exactly)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    out = []
    for messages in conversations:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=CHECK_TOKENS, do_sample=False, eos_token_id=stop_ids,
                                 pad_token_id=tokenizer.pad_token_id)
        out.append({"prompt_ids": list(ids), "tokens": _until_stop(gen[0, len(ids):].tolist(), stop_ids)})
    return out


def llama_cpp_greedy(gguf_file: Path, conversations: list[list[dict]], stop_ids: list[int]) -> list[dict]:
    """The same through llama-cpp-python: the GGUF's embedded chat template, llama.cpp's tokenizer and forward."""
    try:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    except ImportError:
        raise UserError("--gguf: llama-cpp-python is not installed; run `make gguf` (requirements-gguf.txt)") \
            from None
    llm = Llama(model_path=str(gguf_file), n_ctx=1024, n_threads=max(1, os.cpu_count() or 1), verbose=False)
    vocab = llm._model
    formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"],
                                    eos_token=vocab.token_get_text(llm.token_eos()),
                                    bos_token=vocab.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else "")
    out = []
    for messages in conversations:
        prompt = formatter(messages=messages).prompt
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        tokens = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            tokens.append(int(token))
            if token in stop_ids or len(tokens) == CHECK_TOKENS:
                break
        out.append({"prompt_ids": list(ids), "tokens": tokens})
    llm.close()
    return out


def _until_stop(tokens: list[int], stop_ids: list[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:i + 1]
    return tokens


def check_gguf(gguf_file: GGUFFile, expected: list[dict], conversations: list[list[dict]],
               stop_ids: list[int]) -> dict:
    """llama-cpp-python against transformers on the same prompts: prompt ids and greedy tokens, per prompt."""
    got = llama_cpp_greedy(gguf_file.path, conversations, stop_ids)
    rows = [{"prompt_ids_equal": g["prompt_ids"] == e["prompt_ids"], "tokens_equal": g["tokens"] == e["tokens"],
             "transformers": e["tokens"], "llama_cpp": g["tokens"], "prompt_tokens": len(e["prompt_ids"])}
            for g, e in zip(got, expected)]
    equal = sum(r["tokens_equal"] for r in rows)
    result = {"prompts": len(rows), "prompt_ids_equal": all(r["prompt_ids_equal"] for r in rows),
              "greedy_equal": equal, "max_new_tokens": CHECK_TOKENS, "rows": rows,
              "client": f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}"}
    gguf_file.check = result
    return result


def export_gguf(hf_dir: Path, name: str, types: list[str], summary: dict,
                llama_cpp: Path) -> tuple[list[GGUFFile], list[str]]:
    """Each GGUF type of ``types`` from the HF export in ``hf_dir`` (into it, as ``<name>-<type>.gguf``), checked
    with llama-cpp-python; the Modelfile; the model card's section. Prompt ids that differ from transformers' are
    refused."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    stop_ids = list((summary.get("template") or {}).get("stop_token_ids") or [tokenizer.eos_token_id])
    end_of_turn = stop_ids[0] if stop_ids[0] != tokenizer.eos_token_id else None
    prompts = ((summary.get("config") or {}).get("evaluation_config") or {}).get("eval_prompts") or []
    conversations = check_conversations([p for p in prompts if isinstance(p, str)])
    expected = hf_greedy(hf_dir, conversations, stop_ids)
    files = []
    for gguf_type in dict.fromkeys(types):
        file = convert(hf_dir, hf_dir / f"{name}-{gguf_type}.gguf", gguf_type, llama_cpp, end_of_turn)
        result = check_gguf(file, expected, conversations, stop_ids)
        if not result["prompt_ids_equal"]:
            k = next(i for i, r in enumerate(result["rows"]) if not r["prompt_ids_equal"])
            raise UserError(f"--gguf {gguf_type}: llama.cpp renders or tokenizes held-out prompt {k + 1} differently "
                            "from transformers (its embedded template or vocabulary differs); nothing was written")
        files.append(file)
        print(f"{file.path.name}: {file.size / 2**20:,.1f} MiB; llama-cpp-python greedy tokens equal transformers' "
              f"on {result['greedy_equal']}/{result['prompts']} prompts (first {CHECK_TOKENS} tokens, prompt ids "
              "equal)", flush=True)
    stops = tokenizer.convert_ids_to_tokens(stop_ids)
    (hf_dir / "Modelfile").write_text(modelfile(files[0].path.name, stops), encoding="utf-8")
    return files, card_section(files, llama_cpp)


def card_section(files: list[GGUFFile], llama_cpp: Path) -> list[str]:
    lines = ["## GGUF (llama.cpp, Ollama, LM Studio)", "",
             f"Converted from these weights by llama.cpp's own `convert_hf_to_gguf.py` ({llama_cpp.name}), with the "
             "trained chat template and its end-of-turn token in the file. Checked with a real client: "
             f"llama-cpp-python loaded each file, rendered {files[0].check['prompts']} held-out prompts with the "
             "template embedded in it, and its greedy tokens were compared with transformers' on this export "
             f"(first {CHECK_TOKENS} tokens).", "",
             "| file | type | size | prompt ids equal | greedy tokens equal |", "|---|---|---|---|---|"]
    for f in files:
        lines.append(f"| `{f.path.name}` | {f.type} | {f.size / 2**20:,.1f} MiB | "
                     f"{'yes' if f.check['prompt_ids_equal'] else 'no'} | "
                     f"{f.check['greedy_equal']}/{f.check['prompts']} |")
    return lines + ["", f"`llama-cli -m {files[0].path.name} -cnv` chats with the trained template; "
                    "`ollama create NAME -f Modelfile` imports it into Ollama.", ""]


# ---------------------------------------------------------------------- Ollama
def modelfile(gguf_name: str, stop_strings: list[str]) -> str:
    """An Ollama Modelfile for the GGUF beside it: the stop tokens of the trained template."""
    lines = ["# Ollama: ollama create <name> -f Modelfile, then ollama run <name>",
             "# The chat template is the trained one, inside the GGUF (tokenizer.chat_template).",
             f"FROM ./{gguf_name}"]
    lines += [f'PARAMETER stop "{s}"' for s in stop_strings]
    return "\n".join(lines) + "\n"
