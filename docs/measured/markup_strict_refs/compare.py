"""Copy-constrained decoding with the shipped grammar vs the strict-refs grammar (forward refs
as debts, valid relation types, no duplicate spans): same windows, same adapter, paired
bootstrap over source documents. Usage:

    cp src/fedmedlora/task/markup_grammar.py /tmp/strict.py  # at commit 90b1275
    patch /tmp/strict.py < <(sed -n '/markup_grammar.py/,$p' docs/measured/markup_strict_refs/grammar.patch)
    python docs/measured/markup_strict_refs/compare.py ADAPTER 48 OUT.json /tmp/strict.py

The patch is against commit 90b1275's grammar (before the trailing-blank fix); the
decoder reads only the fields of the state it needs, so it runs either grammar."""
import importlib.util, json, sys
from pathlib import Path
from collections import Counter
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import torch
import extraction_speed as es
import fedmedlora.evaluation.inference as inf
from fedmedlora.data.schema import load_schema
from fedmedlora.evaluation.bootstrap import micro_counts, key_slice, paired_bootstrap
from fedmedlora.evaluation.metrics import score_corpus
spec = importlib.util.spec_from_file_location("strict_grammar", sys.argv[4])
strict = importlib.util.module_from_spec(spec); spec.loader.exec_module(strict)
adapter, windows, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
args = es.argparse.Namespace(model="smollm2-135m", adapter=adapter, save_adapter=None,
    site="riverside", data=Path("/work/shared/data"), train_docs=4, test_docs=2, train_steps=0, windows=windows,
    window_chars=240, max_chunk_tokens=48, batch_size=16, max_new_tokens=200, zero_shot=False, seed=0)
torch.set_num_threads(1)
lm, groups, _ = es.prepare(args); torch.set_num_threads(1)
schema = load_schema()
res = {}
for tag, cls in (("shipped", inf.MarkupGrammar), ("strict", strict.MarkupGrammar)):
    inf.MarkupGrammar = cls
    rows, names, issues, tokens = [], [], Counter(), 0
    for sp, docs in groups:
        found, st = inf.extract(lm.model, lm.tokenizer, docs, sp.entity_types, schema, max_chunk_tokens=48,
            settings=es.settings_for("constrained+spec", args, 8), device=torch.device("cpu"), precision="fp32")
        issues.update(st.issues); tokens += st.generated_tokens
        for g, p in zip(docs, found):
            rows.append(micro_counts(score_corpus([g], [p], sp.entity_types, sp.relation_types)[0]))
            names.append(str(g.meta.get("source_document", g.id)))
    res[tag] = {"counts": rows, "groups": names, "issues": dict(issues), "tokens": tokens}
summary = {"windows": len(res["shipped"]["counts"]), "adapter": str(adapter)}
for tag in res:
    summary[tag] = {"parse_issues": res[tag]["issues"], "generated_tokens": res[tag]["tokens"]}
for kind, mode in (("entity", "strict"), ("entity", "lenient"), ("relation", "strict")):
    sl = key_slice(kind, mode)
    a = [[r[sl] for r in res["shipped"]["counts"]]]
    b = [[r[sl] for r in res["strict"]["counts"]]]
    summary[f"{kind}_{mode}_strict_minus_shipped"] = paired_bootstrap(a, b, res["shipped"]["groups"])
print(json.dumps(summary, indent=1))
out.write_text(json.dumps(summary, indent=1))
