"""The metadata step of a GGUF export, run as a script with llama.cpp's own gguf-py (the converter's, not
requirements.txt's ``gguf``: the two differ though both say 0.19.0):

    python utils/checkpoint/gguf_metadata.py RAW.gguf OUT.gguf SPEC.json

copies RAW to OUT through llama.cpp's ``gguf_new_metadata.copy_with_new_metadata`` with what SPEC says:

* ``chat_template``: the trained template (``tokenizer.chat_template``);
* ``eot_token_id``: the template's end-of-turn token, when it is not eos;
* ``add_space_prefix``: false for a tokenizer whose Metaspace prepends ``▁`` only at the start of the input
  (transformers' ``prepend_scheme: first``), where llama.cpp would add one after every special token;
* ``merge_scores``: for a SentencePiece-style BPE vocabulary converted without a ``tokenizer.model``, the score
  of each token made by a merge (minus its merge rank), so llama.cpp's SPM tokenizer merges in the order of the
  BPE merges: the converter leaves every score at -1000, and then llama.cpp merges in another order.

It imports nothing from this repository (utils/checkpoint/gguf_export.py writes SPEC and runs it).
"""
from __future__ import annotations

import json
import sys


def rewrite(raw: str, out: str, spec: dict) -> None:
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(raw, "r")
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    new = {gguf.Keys.Tokenizer.CHAT_TEMPLATE: MetadataDetails(gguf.GGUFValueType.STRING, spec["chat_template"])}
    if spec.get("eot_token_id") is not None:
        new[gguf.Keys.Tokenizer.EOT_ID] = MetadataDetails(gguf.GGUFValueType.UINT32, int(spec["eot_token_id"]))
    if spec.get("add_space_prefix") is not None:
        new[gguf.Keys.Tokenizer.ADD_PREFIX] = MetadataDetails(gguf.GGUFValueType.BOOL, bool(spec["add_space_prefix"]))
    scores_field = reader.get_field(gguf.Keys.Tokenizer.SCORES)
    scores = scores_field.contents() if scores_field is not None else []
    kind = reader.get_field(gguf.Keys.Tokenizer.MODEL)
    if spec.get("merge_scores") and kind is not None and kind.contents() == "llama" and set(scores) == {-1000.0}:
        for token_id, score in spec["merge_scores"].items():
            scores[int(token_id)] = float(score)
        new[gguf.Keys.Tokenizer.SCORES] = MetadataDetails(gguf.GGUFValueType.ARRAY, scores,
                                                          sub_type=gguf.GGUFValueType.FLOAT32)
    writer = gguf.GGUFWriter(out, arch=arch, endianess=reader.endianess)
    alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = alignment.contents()
    copy_with_new_metadata(reader, writer, new, [])


if __name__ == "__main__":
    rewrite(sys.argv[1], sys.argv[2], json.loads(open(sys.argv[3], encoding="utf-8").read()))
