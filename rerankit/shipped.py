"""What ships beside a trained model, fitted the way it will be used.

At the end of ``fit`` the kept model is loaded as ``Reranker.load`` will return it (the adapter
merged into its base, in the precision this machine serves by default) and scores the
validation queries as deployed (``rerankit.deployed``). On those scores:

1. the self-ensemble (``rerankit.ensemble``): its signals are computed for the same pairs and
   their weights fitted, unless ``ensemble: none``;
2. the calibration (``rerankit.calibration``), on the score a document ranks by;
3. the fusion with the first stage (``rerankit.fusion``), on that score too.

Every signal's own metrics are reported beside the first stage's, so a run shows where each
part stands.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rerankit.calibration import calibration_report
from rerankit.ensemble import (
    BM25_FILE,
    CORPUS_EMBEDDINGS,
    ENSEMBLE_DIR,
    PIN_LIMIT,
    BestSentence,
    BM25Signal,
    CosineSignal,
    Ensemble,
    base_signals,
    document_sentences,
    fit_ensemble,
    write_encoder_graph,
)
from rerankit.validation import ValidationSet, Validator

log = logging.getLogger(__name__)


@dataclass
class Shipped:
    ensemble: Ensemble | None
    calibration: dict  # calibration_report of the final score
    fusion: dict  # Validator.fusion_report of the final score
    report: dict  # each signal's own metrics, the ensemble's fit, the final metrics
    bm25: BM25Signal | None
    cosine: CosineSignal | None = None  # with the corpus's embeddings pinned, when it weighs


def fit_shipped(
    reranker,
    vset: ValidationSet,
    validator: Validator,
    corpus_texts: list[str],
    *,
    ensemble: str,
    base_model: str,
    normalization: str = "zscore",
    key: str,
    seed: int,
    base_revision: str | None = None,
    encoder_graph: Path | None = None,
) -> Shipped:
    """Score ``vset`` with ``reranker`` (the model as it ships) and fit the ensemble (when
    ``ensemble`` is ``auto``, its signals put on one scale by ``normalization``), the calibration
    and the fusion on it.

    With ``encoder_graph``, a run keeps the sentence encoder converted to OpenVINO there, once:
    where the reranker runs an OpenVINO graph, the encoder is written first and served from that
    file while the ensemble is fitted; elsewhere it is written after the fit, only if the ensemble
    weighs the cosine. A graph the ensemble does not need is removed again."""
    from rerankit.inference import encoder_beside, serves_openvino
    from rerankit.loading import resolve_model_path

    recall_at = validator.recall_at
    model_queries, docs = vset.flat_pairs(reranker.score_injection)
    log.info("scoring %d validation pairs with the model as it ships", len(docs))
    logits = reranker.input_logits(model_queries, docs, vset.flat_instructions())[0].astype(np.float64)
    features = {"reranker": logits}
    bm25 = cosine = None
    graph_first = False  # whether the encoder's graph was written before the fit
    if ensemble == "auto":
        queries, _ = vset.flat_pairs()  # signals read the query as the user wrote it
        bm25 = BM25Signal.from_corpus(corpus_texts)
        features["bm25"] = bm25.scores(queries, docs)
        features["bm25_sentence"] = BestSentence(bm25).scores(queries, docs)
        cosine = _cosine(resolve_model_path(base_model), base_revision, reranker)
        if cosine is not None:
            # in the runtime Reranker.load gives the encoder beside this reranker
            graph_first = encoder_graph is not None and serves_openvino(reranker.model)
            written = graph_first and write_encoder_graph(cosine, encoder_graph)
            encoder_beside(cosine, reranker.model, encoder_graph if written else None)
            log.info("embedding the validation pairs and their sentences with the backbone %s", base_model)
            features["cosine"] = cosine.scores(queries, docs)
            features["cosine_sentence"] = BestSentence(cosine).scores(queries, docs)
    per_query = [
        dict(zip(features, parts)) for parts in zip(*(vset.split_scores(f) for f in features.values()))
    ]
    own = {name: vset.metrics(vset.split_scores(values), recall_at) for name, values in features.items()}
    fitted, ensemble_report = None, None
    if len(features) > 1:
        fitted, ensemble_report = fit_ensemble(
            per_query,
            lambda scores, queries: vset.subset(queries).metrics(scores, recall_at)[key],
            tuple(features),
            normalization=normalization,
            seed=seed,
        )
        final = fitted.combine(features)
    else:
        final = logits
    needs = set(fitted.needs) if fitted is not None else set()
    if "cosine" in base_signals(needs):
        pinned = corpus_texts if "cosine" in needs and len(corpus_texts) <= PIN_LIMIT else []
        if "cosine_sentence" in needs:
            sentences = [s for text in corpus_texts for s in document_sentences(text)]
            if len(pinned) + len(sentences) <= PIN_LIMIT:
                pinned = [*pinned, *sentences]
            else:
                log.info(
                    "the corpus's %d sentences are not kept embedded: over %d texts",
                    len(sentences),
                    PIN_LIMIT,
                )
        if pinned:
            log.info("embedding %d corpus texts for the ensemble's cosine", len(pinned))
            cosine.pin(pinned)
    report = {
        "signals": own,
        "ensemble": ensemble_report,
        "final": vset.metrics(vset.split_scores(final), recall_at),
        "first_stage": validator.first_stage_metrics(),
        "depths": _depth_table(vset, validator.first_stage_scores(), logits, final, recall_at),
        # the sentence encoder's runtime: the one Reranker.load gives it beside this model
        "encoder": cosine.runtime if cosine is not None else None,
    }
    weighs = cosine is not None and "cosine" in base_signals(needs)
    if encoder_graph is not None and cosine is not None:
        if not weighs:
            shutil.rmtree(Path(encoder_graph).parent, ignore_errors=True)
        elif not graph_first:  # where it cannot be converted, the log says why and a load converts it
            write_encoder_graph(cosine, encoder_graph)
    return Shipped(
        fitted,
        calibration_report(final, vset.flat_labels()),
        validator.fusion_report(final, key, seed),
        report,
        bm25 if "bm25" in base_signals(needs) else None,
        cosine if weighs and cosine.pinned else None,
    )


# Rerank depths the report shows, those within the depth validation ranked.
DEPTHS = (10, 30, 100)


def _depth_table(vset: ValidationSet, first_stage, logits, final, recall_at: int) -> dict:
    """The first stage, the cross-encoder alone and what ships, reordering each query's top d."""
    deepest = max((len(c) for c in vset.candidates), default=0)
    table = {}
    for depth in [d for d in DEPTHS if d <= deepest] or [deepest]:
        cut = vset.at_depth(depth)
        rows = {
            "first_stage": first_stage,
            "reranker": vset.split_scores(logits),
            "final": vset.split_scores(final),
        }
        table[str(depth)] = {
            name: cut.metrics([s[:depth] for s in scores], recall_at) for name, scores in rows.items()
        }
    return table


def save_signals(out: Path, shipped: Shipped) -> None:
    """The signals' files a run folder keeps beside the encoder's graph (``fit_shipped`` wrote
    it): BM25's term statistics and the corpus's embeddings."""
    if shipped.bm25 is not None or shipped.cosine is not None:
        (out / ENSEMBLE_DIR).mkdir(parents=True, exist_ok=True)
    if shipped.bm25 is not None:
        shipped.bm25.save(out / ENSEMBLE_DIR / BM25_FILE)
    if shipped.cosine is not None:
        shipped.cosine.save_pinned(out / ENSEMBLE_DIR / CORPUS_EMBEDDINGS)


def _cosine(base_model: str, revision: str | None, reranker) -> CosineSignal | None:
    """The backbone's sentence encoder on the reranker's device and precision; None, said in
    the log, when the backbone is no sentence-embedding model or cannot be read as one."""
    from rerankit.inference import device_type

    try:
        cosine = CosineSignal.load(
            base_model, dtype=_dtype_of(reranker.model), device=device_type(reranker.model), revision=revision
        )
    except (OSError, ValueError) as exc:
        log.warning(
            "ensemble: no cosine signal, the backbone %s cannot be read as a sentence encoder (%s)",
            base_model,
            exc,
        )
        return None
    if cosine is None:
        log.info("ensemble: no cosine signal, the backbone %s is no sentence-embedding model", base_model)
    return cosine


def _dtype_of(model):
    try:
        return next(model.parameters()).dtype
    except (AttributeError, StopIteration):
        return None
