"""The prepared corpora a run reads: every manifest and shard verified against the tokenizer, the example stores
loaded, the sampling weight of each directory and where it came from."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from utils.common.errors import UserError
from utils.data.shards import verify_data_dir
from utils.sampling.example_store import ExampleStore, load_sft_store


@dataclass
class DataDir:
    path: Path
    manifest: dict
    train: ExampleStore
    val: ExampleStore


@dataclass
class Corpora:
    """The data dirs of a run in their sampling order, and what the run derives from them."""

    dirs: list[DataDir]
    weights: list[float]
    weights_from: str
    """Where the weights came from: a flag, the config, or the sizes."""
    hashes: dict
    """What a checkpoint remembers of its data: every train shard's sha256 per dir name."""
    val_stores: list[ExampleStore]
    """One validation store per source of every dir, the empty ones left out."""
    longest: int
    """Tokens of the longest training example."""


def load_corpora(paths: list[str], fingerprint: str, accelerator, cli_weights: list[float] | None = None,
                 configured: dict | None = None) -> Corpora:
    """Verify, load and weigh ``paths`` (rank 0 fills the store caches first, the others then read them)."""
    with accelerator.main_process_first():
        dirs = [_load_dir(Path(raw), fingerprint) for raw in paths]
    names = [d.path.name for d in dirs]
    if len(set(names)) != len(names):
        raise UserError(f"--data_dirs: two directories share a name ({names}); names identify sources")
    weights, weights_from = _weights(dirs, cli_weights, configured or {})
    return _corpora(dirs, weights, weights_from)


def matched_to_checkpoint(corpora: Corpora, recorded: list[str] | None, announce: bool) -> Corpora:
    """``corpora`` in the order of the data dirs a checkpoint ``recorded`` (None: no checkpoint, as given): sources
    are matched by name, so a reordered --data_dirs resumes bit-identically. Other data stays as given: the resume's
    data hash check names the difference."""
    if recorded is None:
        return corpora
    saved = [Path(p).name for p in recorded]
    names = [d.path.name for d in corpora.dirs]
    if saved == names or sorted(saved) != sorted(names):
        return corpora
    if announce:
        print(f"--data_dirs: matched to the checkpoint's sources by name ({', '.join(saved)})", flush=True)
    return _in_order(corpora, saved)


def _in_order(corpora: Corpora, names: list[str]) -> Corpora:
    """The same corpora, their dirs (and weights) in the order of ``names``."""
    order = [[d.path.name for d in corpora.dirs].index(n) for n in names]
    return _corpora([corpora.dirs[i] for i in order], [corpora.weights[i] for i in order], corpora.weights_from)


def _corpora(dirs: list[DataDir], weights: list[float], weights_from: str) -> Corpora:
    hashes = {d.path.name: [s["sha256"] for s in d.manifest["splits"]["train"]["shards"]] for d in dirs}
    val = [s for d in dirs for s in d.val.by_source() if len(s)]
    return Corpora(dirs, weights, weights_from, hashes, val, max(int(d.train.lengths.max()) for d in dirs))


def _load_dir(path: Path, fingerprint: str) -> DataDir:
    manifest = verify_data_dir(path, fingerprint)
    data_dir = DataDir(path, manifest, load_sft_store(path, "train", manifest), load_sft_store(path, "val", manifest))
    if len(data_dir.train) == 0:
        raise UserError(f"{path}: the train split is empty; re-run the prepare stage with more data")
    return data_dir


def _weights(dirs: list[DataDir], cli: list[float] | None, configured: dict) -> tuple[list[float], str]:
    """Per-dir sampling weights and where they came from."""
    if cli:
        if len(cli) != len(dirs):
            raise UserError(f"--data_weights: {len(cli)} weights for {len(dirs)} --data_dirs; give one per dir")
        return list(cli), "--data_weights"
    unknown = set(configured) - {d.path.name for d in dirs}
    if unknown:
        raise UserError(f"data_weights: {sorted(unknown)} name no --data_dirs entry "
                        f"(names: {[d.path.name for d in dirs]})")
    if configured:
        weights = [float(configured.get(d.path.name, 1.0)) for d in dirs]
        if not any(w > 0 for w in weights):
            raise UserError(f"data_weights: all weights are 0 ({configured}); give at least one weight > 0")
        return weights, "config data_weights"
    return [float(len(d.train)) for d in dirs], "proportional to size"
