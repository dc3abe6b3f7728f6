"""Regenerates the caption-metric fixtures from pycocoevalcap (the reference
implementation) -- not part of the test run.

    python3 -m venv /tmp/pcoco && /tmp/pcoco/bin/pip install pycocoevalcap==1.2
    /tmp/pcoco/bin/python tests/data/metrics/make_caption_fixture.py   # needs `java` on PATH

Writes coco_captions_expected.json (Java PTBTokenizer output + Bleu/METEOR/
ROUGE_L/CIDEr of coco_captions_input.json, and scores of a random stress set
scored on pre-tokenized text) and ptb_tokenizer_cases.json (raw and final
tokenization of hard cases, from the CoreNLP 3.4.1 jar shipped in pycocoevalcap).
"""

import json
import os
import platform
import random
import subprocess
import tempfile
from importlib.metadata import version
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

HERE = Path(__file__).parent
JAR = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR


def java_version():
    return subprocess.run(["java", "-version"], capture_output=True, text=True, check=True).stderr.splitlines()[0]


def scores(gts, res, meteor=False):
    out = {}
    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"Bleu_{i + 1}": float(b[i]) for i in range(4)})
    if meteor:
        out["METEOR"] = float(Meteor().compute_score(gts, res)[0])
    out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return out


def stress_set(seed=0, images=25):
    rng = random.Random(seed)
    vocab = [
        "a",
        "an",
        "the",
        "man",
        "woman",
        "dog",
        "cat",
        "two",
        "three",
        "red",
        "blue",
        "sitting",
        "standing",
        "on",
        "in",
        "of",
        "with",
        "next",
        "to",
        "near",
        "table",
        "street",
        "field",
    ]
    refs, hyps = {}, {}
    for i in range(images):
        rs = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 14))) for _ in range(rng.randint(1, 6))]
        kind = i % 5
        if kind == 0:
            hyp = rs[0]  # identical to a reference
        elif kind == 1:
            hyp = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 3)))  # short: brevity penalty
        elif kind == 2:
            hyp = " ".join([rng.choice(vocab)] * rng.randint(2, 8))  # repeated word: clipping
        else:
            hyp = " ".join(rng.choice(vocab) for _ in range(rng.randint(4, 18)))
        refs[f"s{i}"], hyps[f"s{i}"] = rs, hyp
    hyps["s3"] = ""  # an empty hypothesis
    return refs, hyps


def main():
    data = json.loads((HERE / "coco_captions_input.json").read_text())
    gts_raw = {k: [{"caption": c} for c in v] for k, v in data["refs"].items()}
    res_raw = {k: [{"caption": data["hyps"][k]}] for k in data["refs"]}
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts_raw), tok.tokenize(res_raw)
    stress_refs, stress_hyps = stress_set()
    expected = {
        "produced_by": {
            "command": "/tmp/pcoco/bin/python tests/data/metrics/make_caption_fixture.py",
            "pycocoevalcap": version("pycocoevalcap"),
            "java": java_version(),
            "python": platform.python_version(),
            "numpy": version("numpy"),
            "note": "refs tokenized as one PTBTokenizer batch and hyps as another, as COCOEvalCap.evaluate does; "
            "SPICE not computed (it downloads Stanford CoreNLP models on first use, no network here)",
        },
        "tokenized_refs": gts,
        "tokenized_hyps": {k: v[0] for k, v in res.items()},
        "scores": scores(gts, res, meteor=True),
        "stress": {
            "refs": stress_refs,
            "hyps": stress_hyps,
            "scores": scores(stress_refs, {k: [v] for k, v in stress_hyps.items()}),
        },
    }
    (HERE / "coco_captions_expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")

    cases = [line.rstrip("\n") for line in (HERE / "ptb_tokenizer_cases.txt").read_text(encoding="utf-8").split("\n")]
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write("\n".join(cases).encode())
    raw = (
        subprocess.run(
            ["java", "-cp", str(JAR), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", f.name],
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\n")
    )
    os.remove(f.name)
    final = tok.tokenize({i: [{"caption": c}] for i, c in enumerate(cases)})
    assert len(raw) == len(cases)
    out = {
        "produced_by": {
            "command": "/tmp/pcoco/bin/python tests/data/metrics/make_caption_fixture.py",
            "raw": f"java -cp {JAR.name} edu.stanford.nlp.process.PTBTokenizer -preserveLines <cases, one per line>",
            "final": "pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer().tokenize (one batch, -preserveLines -lowerCase, PUNCTUATIONS removed)",
            "pycocoevalcap": version("pycocoevalcap"),
            "java": java_version(),
        },
        "cases": [{"text": c, "raw": r, "final": final[i][0]} for i, (c, r) in enumerate(zip(cases, raw))],
    }
    (HERE / "ptb_tokenizer_cases.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
