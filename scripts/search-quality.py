#!/usr/bin/env python3
"""Search quality of memoryd beside a standard BM25, on the same notes.

Runs every query of the vendored Cranfield collection
(crates/memoryd-bench/collections/cranfield, see its PROVENANCE.md) through
memory_search over MCP (`memoryd-bench --quality-run`, a real memoryd on a
vault of the collection's notes), and scores it next to:

  - bm25s (Lucene BM25, k1 1.5, b 0.75) with PyStemmer's English stemmer and
    bm25s's English stop words, over the same note texts;
  - memoryd's ranking before issue 20 (BM25 k1 1.2, b 0.75, title words x3,
    no stemming, no stop words), re-implemented here from that code.

Metrics: nDCG@10 (graded gains), Recall@10, Recall@50, MRR, over the judged
queries. Needs `pip install bm25s PyStemmer`, and a release build:
`cargo build --release -p memoryd -p memoryctl -p memoryd-bench`.

  scripts/search-quality.py [--embeddings-url URL [--embeddings-model M]]

--embeddings-url runs memoryd again with [search] embeddings_url (and
embeddings_model) set, once per --rrf-k value (default 60), each row
"memoryd hybrid"; and, computed here outside memoryd with the same endpoint
and the same texts (title, blank line, body, no prefixes), a dense-only
ranking and the reciprocal rank fusion of bm25s and that dense ranking
(k 60): the standard hybrid memoryd's must be no worse than.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTION = os.path.join(ROOT, "crates/memoryd-bench/collections/cranfield")


def smart_records(path):
    records, field = [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.startswith(".I "):
                records.append((line[3:].strip(), {}))
                field = None
            elif len(line) == 2 and line.startswith("."):
                field = line[1]
            elif field and records:
                fields = records[-1][1]
                fields[field] = (fields.get(field, "") + " " + line.strip()).strip()
    return records


def cranfield():
    """Documents, queries by position (1..225) and gains (5 - code), as
    memoryd-bench's quality.rs reads them."""
    docs = [(i, f.get("T", ""), f.get("W", "")) for i, f in smart_records(os.path.join(COLLECTION, "cran.all.1400"))]
    queries = [(str(n + 1), f.get("W", "")) for n, (_, f) in enumerate(smart_records(os.path.join(COLLECTION, "cran.qry")))]
    qrels = {}
    with open(os.path.join(COLLECTION, "cranqrel")) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] in ("1", "2", "3", "4"):
                qrels.setdefault(parts[0], {})[parts[1]] = 5 - int(parts[2])
    return docs, queries, qrels


def note_text(title, body):
    return f"# {title}\n\n{body}\n"


def scores(queries, qrels, run):
    total = {"nDCG@10": 0.0, "R@10": 0.0, "R@50": 0.0, "MRR": 0.0}
    n = 0
    for qid, _ in queries:
        judged = qrels.get(qid)
        if not judged:
            continue
        ranked = run.get(qid, [])
        gains = [judged.get(d, 0) for d in ranked]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:10]))
        ideal = sorted(judged.values(), reverse=True)
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:10]))
        total["nDCG@10"] += dcg / idcg
        total["R@10"] += sum(1 for g in gains[:10] if g > 0) / len(judged)
        total["R@50"] += sum(1 for g in gains[:50] if g > 0) / len(judged)
        total["MRR"] += next((1 / (i + 1) for i, g in enumerate(gains) if g > 0), 0.0)
        n += 1
    return {k: v / n for k, v in total.items()}


def bm25s_run(docs, queries, k=50):
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    corpus = [note_text(t, b) for _, t, b in docs]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    run = {}
    for qid, text in queries:
        tokens = bm25s.tokenize([text], stopwords="en", stemmer=stemmer, show_progress=False)
        if not tokens.vocab:
            run[qid] = []
            continue
        found, _ = retriever.retrieve(tokens, k=k, show_progress=False)
        run[qid] = [docs[i][0] for i in found[0]]
    return run


def before_run(docs, queries, k=50):
    """memoryd's ranking before issue 20 (crates/memoryd-core/src/vault/mod.rs
    at 898da09): words split on non-alphanumerics, lower-cased; title words
    count 3 times in tf and length; BM25 k1 1.2, b 0.75, Lucene's idf; ties
    by path."""
    words = lambda text: [w.lower() for w in re.split(r"[^\w]|_", text) if w]
    postings, lengths = {}, []
    for n, (_, title, body) in enumerate(docs):
        tf, length = {}, 0.0
        # The note's title is its heading; the body holds the heading line too.
        for w in words(title):
            tf[w] = tf.get(w, 0.0) + 3.0
            length += 3.0
        for w in words(note_text(title, body)):
            tf[w] = tf.get(w, 0.0) + 1.0
            length += 1.0
        lengths.append(length)
        for w, f in tf.items():
            postings.setdefault(w, []).append((n, f))
    avg, N = sum(lengths) / len(lengths), len(docs)
    run = {}
    for qid, text in queries:
        acc = {}
        for w in sorted(set(words(text))):
            plist = postings.get(w, [])
            idf = math.log((N - len(plist) + 0.5) / (len(plist) + 0.5) + 1.0)
            for d, f in plist:
                norm = 1.2 * (1 - 0.75 + 0.75 * lengths[d] / avg)
                acc[d] = acc.get(d, 0.0) + idf * f * 2.2 / (f + norm)
        ranked = sorted(acc, key=lambda d: (-acc[d], f"cranfield/{docs[d][0]}.md"))
        run[qid] = [docs[d][0] for d in ranked[:k]]
    return run


def embed(url, model, texts, batch=64):
    """Unit vectors of `texts` from an OpenAI-compatible endpoint."""
    out = []
    for i in range(0, len(texts), batch):
        body = json.dumps({"model": model, "input": texts[i : i + batch]}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as answer:
            data = sorted(json.load(answer)["data"], key=lambda d: d["index"])
        for d in data:
            v = d["embedding"]
            norm = math.sqrt(sum(x * x for x in v)) or 1.0
            out.append([x / norm for x in v])
    return out


def dense_run(docs, queries, url, model, k=100):
    vectors = embed(url, model, [f"{t}\n\n{b}" for _, t, b in docs])
    run = {}
    for (qid, _), q in zip(queries, embed(url, model, [text for _, text in queries])):
        sims = sorted(((sum(a * b for a, b in zip(q, v)), n) for n, v in enumerate(vectors)), reverse=True)
        run[qid] = [docs[n][0] for _, n in sims[:k]]
    return run


def rrf(runs, k=60, depth=50):
    fused = {}
    for qid in set().union(*runs):
        scores = {}
        for run in runs:
            for rank, d in enumerate(run.get(qid, [])):
                scores[d] = scores.get(d, 0.0) + 1.0 / (k + rank + 1)
        fused[qid] = sorted(scores, key=lambda d: (-scores[d], d))[:depth]
    return fused


def memoryd_run(extra_config):
    bench = os.path.join(ROOT, "target/release/memoryd-bench")
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        cmd = [bench, "--quality-run", COLLECTION, out.name]
        if extra_config:
            cmd += ["--config", extra_config]
        subprocess.run(cmd, check=True, timeout=3600)
        return json.load(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embeddings-url")
    ap.add_argument("--embeddings-model", default="")
    ap.add_argument("--rrf-k", type=int, action="append", help="memoryd's search.rrf_k (repeatable; default 60)")
    args = ap.parse_args()
    docs, queries, qrels = cranfield()
    bm25 = bm25s_run(docs, queries, k=100)
    rows = [
        ("memoryd before issue 20 (re-implemented)", before_run(docs, queries)),
        ("bm25s, English stems + stop words", bm25),
        ("memoryd lexical (over MCP)", memoryd_run(None)),
    ]
    if args.embeddings_url:
        model = args.embeddings_model or "endpoint default"
        dense = dense_run(docs, queries, args.embeddings_url, args.embeddings_model)
        rows.append((f"dense only ({model}, outside memoryd)", dense))
        rows.append((f"RRF of bm25s and dense, k 60 (outside memoryd)", rrf([bm25, dense])))
        for k in args.rrf_k or [60]:
            config = (
                f'[search]\nembeddings_url = "{args.embeddings_url}"\nembeddings_model = "{args.embeddings_model}"\n'
                f'query_deadline = "10s"\nrrf_k = {k}\n'
            )
            rows.append((f"memoryd hybrid, rrf_k {k} (over MCP)", memoryd_run(config)))
    print(f"Cranfield 1400: {len(docs)} notes, {sum(1 for q, _ in queries if qrels.get(q))} judged queries")
    print(f"| {'ranking':<52} | nDCG@10 | R@10   | R@50   | MRR    |")
    print(f"|{'-' * 54}|---------|--------|--------|--------|")
    for name, run in rows:
        s = scores(queries, qrels, run)
        print(f"| {name:<52} | {s['nDCG@10']:.4f}  | {s['R@10']:.4f} | {s['R@50']:.4f} | {s['MRR']:.4f} |")


if __name__ == "__main__":
    sys.exit(main())
