"""LoRA rerankers that share one base model in memory, adapters unmerged.

Run folders trained from the same base differ only by their adapter (and trained head). Loaded
as usual, each is a merged copy of the whole base; ``SharedBase`` keeps one copy of the base
with every adapter beside it (peft's multi-adapter loading) and scores a batch whose rows use
different adapters together: in one forward pass where peft can mix them (``adapter_names``,
one per row: LoRA layers, and a trained head kept whole when it is a Linear layer), else one
pass per adapter over its rows (a BERT pooler trained whole is not a layer peft mixes).

Each ``Reranker`` of the group keeps what ``Reranker.load`` gave it (calibration, ensemble,
prompt, long-document setting) and scores through an ``AdapterView``: the shared model with
its own adapter. ``rerankit.mixed_batches`` scores several of them in shared batches (what the
server's rounds do). ``reload`` reads a run's folder again onto the same base, beside the
adapter in use (adapters carry names of their own, fresh for each load, never the run's).
Merged copies are faster where the base is small and runs on a CPU (the unmerged LoRA matmuls
cost more than the base's); ``benchmarks/adapters.py`` measures both.

    from rerankit.shared_adapters import SharedBase
    shared = SharedBase.load({"a": "outputs/run-a", "b": "outputs/run-b"}, dtype="float32")
    rerankers = {name: shared.reranker(name) for name in shared.names}
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from rerankit import run_folder
from rerankit.errors import ModelLoadError, short_reason
from rerankit.recorded import RunManifest, parse_record


def adapter_base(path: str | Path) -> tuple[str, str | None] | None:
    """(base model, revision) of a run folder whose model is a LoRA adapter; None for anything
    else (an export, a fully fine-tuned run, a hub id)."""
    path = Path(path)
    if not run_folder.is_run_folder(path):
        return None
    manifest = parse_record(RunManifest, path / run_folder.MANIFEST, run_folder.read_manifest(path))
    if not manifest.adapter or manifest.trust_remote_code:
        return None
    return manifest.base_model, manifest.base_revision


def mixable_modules(model) -> bool:
    """Whether peft can mix adapters within one batch through every module it adapts. A trained
    head peft keeps whole (modules_to_save) mixes only when it is a Linear, Embedding or Conv
    layer; a BERT pooler (dense + tanh) kept whole does not."""
    import torch
    from peft.utils.other import ModulesToSaveWrapper

    supported = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return all(
        isinstance(module.original_module, supported)
        for module in model.modules()
        if isinstance(module, ModulesToSaveWrapper)
    )


def _torch_module():
    import torch

    class AdapterView(torch.nn.Module):
        """The shared model with one adapter: what a Reranker of the group scores with."""

        def __init__(self, shared: SharedBase, name: str) -> None:
            super().__init__()
            # name: the peft adapter this view scores with (``SharedBase.adapters``)
            self.shared, self.name = shared, name
            # registered, so that parameters(), the device and the dtype are the shared model's
            self.peft_model = shared.model

        @property
        def config(self):
            return self.peft_model.config

        def forward(self, **inputs):
            from transformers.modeling_outputs import SequenceClassifierOutput

            logits = self.shared.forward(inputs, [self.name] * len(inputs["input_ids"]))
            return SequenceClassifierOutput(logits=logits)

    return AdapterView


class SharedBase:
    """One base model with the adapters of several run folders; see the module docstring."""

    def __init__(
        self,
        model,
        tokenizer,
        runs: Mapping[str, Path],
        load_options: Mapping,
        max_length: int | None,
        *,
        adapters: Mapping[str, str] | None = None,
        base: tuple[str, str | None] | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        # the runs' common max_length (None when they differ: no mixed batches then)
        self.max_length = max_length
        self.runs, self.load_options = dict(runs), dict(load_options)
        # run name -> the peft adapter it scores with (by default named as the run)
        self.adapters = dict(adapters) if adapters is not None else {name: name for name in self.runs}
        # (base model, revision) every run loaded later must share; None: not checked
        self.base = base
        self._numbers = itertools.count(len(self.runs))
        # peft injects adapter_names through hooks registered for the length of one forward
        # pass, set_adapter switches the whole model, and loading or deleting an adapter changes
        # its modules: passes and those changes take turns.
        self._lock = threading.Lock()
        self.mixable = mixable_modules(model)

    @property
    def names(self) -> list[str]:
        return list(self.runs)

    @classmethod
    def load(
        cls,
        runs: Mapping[str, str | Path],
        *,
        device: str | None = None,
        dtype=None,
        allow_pickle: bool = False,
        **load_options,
    ) -> SharedBase:
        """The base of ``runs`` (name -> run folder, all LoRA runs of one base) loaded once,
        with each run's adapter under its name. ``load_options`` go to ``Reranker.load`` when
        a run's own settings are read (``reranker``)."""
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification

        from rerankit.inference import default_device, default_dtype, torch_dtype
        from rerankit.loading import check_local_model, load_tokenizer, resolve_model_path

        runs = {name: Path(path) for name, path in runs.items()}
        if not runs:
            raise ModelLoadError("SharedBase.load: no runs given")
        bases = {name: adapter_base(path) for name, path in runs.items()}
        plain = [f"{name} ({runs[name]})" for name, base in bases.items() if base is None]
        if plain:
            raise ModelLoadError(f"not LoRA run folders, nothing to share: {', '.join(plain)}")
        if len(set(bases.values())) > 1:
            found = ", ".join(f"{name}: {base[0]}" for name, base in bases.items())
            raise ModelLoadError(f"the runs do not share one base model ({found})")
        device = device or default_device()
        if dtype is None or dtype == "auto":
            dtype = default_dtype(device)
        elif isinstance(dtype, str):
            dtype = torch_dtype(dtype)
        (base_name, revision), first = next(iter(bases.values())), next(iter(runs))
        manifests = {
            name: parse_record(RunManifest, path / run_folder.MANIFEST, run_folder.read_manifest(path))
            for name, path in runs.items()
        }
        adapter_dirs = {name: run_folder.inside(runs[name], m.model_dir) for name, m in manifests.items()}
        tokenizer = load_tokenizer(str(adapter_dirs[first]), False)
        base = resolve_model_path(base_name)
        check_local_model(base, allow_pickle=allow_pickle)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                base,
                num_labels=1,
                dtype=dtype,
                revision=revision,
                pad_token_id=tokenizer.pad_token_id,
                use_safetensors=None if allow_pickle else True,
            )
            # adapters named apart from the runs: a run's name may hold what peft refuses (".")
            adapters = {name: f"adapter{i}" for i, name in enumerate(runs)}
            model = PeftModel.from_pretrained(model, str(adapter_dirs[first]), adapter_name=adapters[first])
            for name, folder in adapter_dirs.items():
                if name != first:
                    model.load_adapter(str(folder), adapter_name=adapters[name])
        except Exception as exc:  # corrupt or missing files surface as many error types
            raise ModelLoadError(f"cannot load the adapters onto {base_name!r}: {short_reason(exc)}") from exc
        model = model.to(device).eval()
        lengths = {m.max_length for m in manifests.values()}
        options = dict(load_options, device=device, dtype=dtype, allow_pickle=allow_pickle)
        max_length = lengths.pop() if len(lengths) == 1 else None
        return cls(model, tokenizer, runs, options, max_length, adapters=adapters, base=(base_name, revision))

    def forward(self, inputs: Mapping, adapter_names: Sequence[str]):
        """The logits of a padded batch, row i through peft adapter ``adapter_names[i]``: one
        mixed-adapter pass where peft supports every adapted module, else one pass per adapter
        over its rows (the base still held once)."""
        names = list(adapter_names)
        with self._lock:
            if self.mixable and len(set(names)) > 1:
                return self.model(**inputs, adapter_names=names).logits
            logits = None
            for name in dict.fromkeys(names):
                rows = [i for i, each in enumerate(names) if each == name]
                self.model.set_adapter(name)
                part = self.model(**{key: value[rows] for key, value in inputs.items()}).logits
                if logits is None:
                    logits = part.new_empty((len(names), *part.shape[1:]))
                logits[rows] = part
            return logits

    def reranker(self, name: str, *, adapter: str | None = None, **load_options):
        """The Reranker of run ``name`` as ``Reranker.load`` reads it (calibration, ensemble,
        prompt, windows; ``load_options`` override the group's), scoring through the shared
        base with the run's adapter (or ``adapter``). Its own merged copy is read once to get
        there and then let go."""
        from rerankit.inference import Reranker

        options = {**self.load_options, **load_options, "device": self.load_options["device"]}
        reranker = Reranker.load(self.runs[name], **{**options, "dtype": self.load_options["dtype"]})
        reranker.model = _torch_module()(self, adapter or self.adapters[name]).eval()
        return reranker

    def reload(self, name: str, check: Callable | None = None, **load_options):
        """Run ``name``'s folder read again onto this base: its adapter loaded under a fresh
        name beside the one in use (whatever scores with that goes on doing so), and the
        Reranker that scores through it (``reranker``). ``check(reranker)`` (a warm-up) runs
        before the run takes the new adapter; whatever fails leaves the run as it was, the new
        adapter deleted. Returns (the new Reranker as ``check`` returned it, the adapter it
        replaces): ``delete_adapter`` that once nothing scores with it."""
        adapter = self.load_adapter(self.runs[name])
        try:
            reranker = self.reranker(name, adapter=adapter, **load_options)
            if check is not None:
                reranker = check(reranker)
        except BaseException:
            self.delete_adapter(adapter)
            raise
        replaced, self.adapters[name] = self.adapters[name], adapter
        return reranker, replaced

    def load_adapter(self, path: str | Path) -> str:
        """The adapter of the LoRA run folder ``path``, loaded beside the others under a fresh
        name (returned); ModelLoadError naming the folder when it is not a LoRA run of this
        base or does not load, and then nothing is left of it."""
        path = Path(path)
        base = adapter_base(path)
        if base is None:
            raise ModelLoadError(f"{path} is not a LoRA run folder: it cannot share the loaded base")
        if self.base is not None and base != self.base:
            raise ModelLoadError(
                f"{path} is a LoRA run of {base[0]!r}, not of the base loaded here ({self.base[0]!r})"
            )
        manifest = parse_record(RunManifest, path / run_folder.MANIFEST, run_folder.read_manifest(path))
        folder = run_folder.inside(path, manifest.model_dir)
        device = next(self.model.parameters()).device
        with self._lock:
            adapter = f"adapter{next(self._numbers)}"
            try:
                self.model.load_adapter(str(folder), adapter_name=adapter, torch_device=str(device))
            except Exception as exc:  # corrupt or missing files surface as many error types
                if adapter in self.model.peft_config:
                    self._delete(adapter)
                raise ModelLoadError(f"cannot load the adapter of {path}: {short_reason(exc)}") from exc
            self.model.eval()
            self.mixable = mixable_modules(self.model)
        if manifest.max_length != self.max_length:
            self.max_length = None  # runs of several max_length: ``score`` refuses to mix them
        return adapter

    def delete_adapter(self, adapter: str) -> None:
        """Free an adapter no run scores with any more (one ``reload`` replaced); ValueError
        for one a run scores with."""
        users = [name for name, used in self.adapters.items() if used == adapter]
        if users:
            raise ValueError(f"adapter {adapter} is run {users[0]}'s: it cannot be deleted")
        with self._lock:
            self._delete(adapter)
            self.mixable = mixable_modules(self.model)

    def _delete(self, adapter: str) -> None:
        others = [name for name in self.model.peft_config if name != adapter]
        if adapter in self.model.active_adapters and others:
            self.model.set_adapter(others[0])  # peft would warn that it had to pick one
        self.model.delete_adapter(adapter)

    def score(self, queries: Sequence[str], docs: Sequence[str], adapter_names: Sequence[str]) -> np.ndarray:
        """Raw logits of the pairs, pair i by the adapter of run ``adapter_names[i]``, batched
        together whatever their adapters (the pair encoding; a decoder's prompt template is not
        applied here)."""
        from rerankit.scoring import budget_batches

        if not len(queries) == len(docs) == len(adapter_names):
            raise ValueError(
                f"{len(queries)} queries, {len(docs)} documents, {len(adapter_names)} adapter names: "
                "one of each per pair"
            )
        unknown = sorted(set(adapter_names) - set(self.runs))
        if unknown:
            raise ValueError(f"adapters not loaded: {', '.join(unknown)} (loaded: {', '.join(self.runs)})")
        adapters = [self.adapters[name] for name in adapter_names]
        if self.max_length is None:
            raise ValueError("the runs truncate pairs at different max_length: score them apart")
        encoded, batches = budget_batches(
            self.tokenizer, queries, docs, max_length=self.max_length, max_tokens=2048, max_batch=128
        )
        return self.score_batches(encoded, batches, adapters)

    def score_batches(
        self, encoded: Mapping, batches: Sequence[Sequence[int]], adapters: Sequence[str]
    ) -> np.ndarray:
        """Raw logits of tokenized pairs (``encoded``: token ids by input name, unpadded) cut
        into ``batches``, pair i through the peft adapter ``adapters[i]``; padded by the base's
        tokenizer, the pad id its model was loaded with."""
        import torch

        from rerankit.encoding import pad_batch

        device = next(self.model.parameters()).device
        scores = np.empty(len(adapters), dtype=np.float32)
        with torch.inference_mode():
            for batch in batches:
                features = {
                    k: v.to(device) for k, v in pad_batch(self.tokenizer, encoded, batch, "pt").items()
                }
                logits = self.forward(features, [adapters[i] for i in batch])
                scores[batch] = logits.float().view(len(batch), -1)[:, 0].cpu().numpy()
        return scores
