"""The sharded checkpoint layer (torch.distributed.checkpoint) on its own, in a subprocess with a world of one:
weights and optimizer state written as shards, read back into a fresh model, and the weights alone (what
load_best_model_at_end reads) without the optimizer; an optimizer with an empty parameter group (LoRA's no-decay
group) included."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from paths import ROOT

SCRIPT = textwrap.dedent('''
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    from utils.parallel.fsdp import shard, save_sharded, load_sharded

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            from transformers import LlamaConfig, LlamaForCausalLM
            torch.manual_seed(0)
            self.model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                      num_hidden_layers=2, num_attention_heads=2))
        def forward(self, ids):
            return self.model(input_ids=ids).logits.square().mean()

    def adamw(model):  # with an empty no-decay group, as a LoRA run's optimizer has
        return torch.optim.AdamW([{"params": list(model.parameters())}, {"params": [], "weight_decay": 0.0}], lr=1e-2)

    def trained():
        model = shard(Head(), torch.device("cpu"))
        optimizer = adamw(model)
        model(torch.arange(16).view(1, 16)).backward()
        optimizer.step()
        return model, optimizer

    def local(model):
        return {k: v.full_tensor().clone() for k, v in model.state_dict().items()}

    model, optimizer = trained()
    save_sharded(model, optimizer, sys.argv[2])
    saved, moments = local(model), {k: v["exp_avg"].full_tensor().clone() for k, v in optimizer.state.items()}
    fresh = shard(Head(), torch.device("cpu"))
    fresh_optimizer = adamw(fresh)
    load_sharded(fresh, fresh_optimizer, sys.argv[2])
    assert all(torch.equal(saved[k], v) for k, v in local(fresh).items()), "weights differ after load"
    restored = [s["exp_avg"].full_tensor() for s in fresh_optimizer.state.values()]
    assert len(restored) == len(moments) and all(torch.equal(a, b) for a, b in zip(moments.values(), restored))
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    load_sharded(fresh, None, sys.argv[2])
    assert all(torch.equal(saved[k], v) for k, v in local(fresh).items()), "weights-only load differs"
    print("ok")
''')


def test_sharded_state_round_trips_weights_and_optimizer_and_weights_alone(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT), str(tmp_path / "sharded")], capture_output=True,
                          text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
    assert (tmp_path / "sharded" / ".metadata").is_file() and list((tmp_path / "sharded").glob("*.distcp"))
