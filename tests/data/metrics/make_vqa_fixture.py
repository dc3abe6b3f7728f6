"""Regenerates vqa_official_expected.json from the official VQA evaluation code --
not part of the test run.

    git clone https://github.com/GT-Vision-Lab/VQA /tmp/VQA
    python3 tests/data/metrics/make_vqa_fixture.py /tmp/VQA

Runs PythonEvaluationTools/vqaEvaluation/vqaEval.py at two commits -- master
(a013f00, "official") and 458a8b2 ("legacy", the 2016-2021 version vendored by
BLIP/LAVIS) -- on a deterministic set of questions with tricky answers.  The only
change made to the official file is Python 2 -> 3 for its two ``print``
statements.  Rounding is n=2 as in the official code; the generator checks that
no value lies on a rounding tie (where Python 2's and 3's ``round`` differ).
"""

import contextlib
import copy
import io
import json
import random
import re
import subprocess
import sys
import types
from pathlib import Path

HERE = Path(__file__).parent
COMMITS = {"official": "a013f0043c1e2cdc995922dfe257f7149aa9af06", "legacy": "458a8b268b1a239dc388e0af4423f3fe7477b04f"}
POOL = [
    "two",
    "2",
    "Two",
    "Two.",
    "two ",
    "the dog",
    "a dog",
    "dog",
    "Dog!",
    "yes",
    "Yes",
    "yes!",
    "YES.",
    "no",
    "No",
    "1,000",
    "1000",
    "3.5",
    "red, white",
    "red white",
    "don't know",
    "dont know",
    "t-shirt",
    "tshirt",
    "t shirt",
    " yes ",
    "yes\n",
    "none",
    "0",
    "zero",
    "ten",
    "10",
    "an apple",
    "apple",
    "a.m.",
    "am",
    "whats up",
    "what's up",
    "(blue)",
    "blue",
    "x/y",
    "x y",
    "1/2",
    "teddy bear",
    "teddy bears",
    "\tteddy bear",
    "Dr. Who",
    "dr who",
]


class _Index:
    def __init__(self, qa):
        self.qa = qa

    def getQuesIds(self):
        return list(self.qa)


def official_class(repo, commit):
    src = subprocess.run(
        ["git", "-C", str(repo), "show", f"{commit}:PythonEvaluationTools/vqaEvaluation/vqaEval.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    src = re.sub(r'print "([^"]*)"', r'print("\1")', src)
    module = types.ModuleType("vqaEval")
    exec(compile(src, "vqaEval.py", "exec"), module.__dict__)  # noqa: S102 -- the official evaluator, run as is
    return module.VQAEval


def make_set(seed=3, questions=40):
    rng = random.Random(seed)
    anns, preds = [], {}
    for q in range(questions):
        base = rng.sample(POOL, rng.randint(1, 4))
        answers = [{"answer": rng.choice(base), "answer_id": i + 1} for i in range(10)]
        anns.append(
            {
                "question_id": 1000 + q,
                "image_id": 7,
                "answers": answers,
                "answer_type": rng.choice(["yes/no", "number", "other"]),
                "question_type": rng.choice(["what", "how many", "is the"]),
            }
        )
        preds[1000 + q] = rng.choice(base + [rng.choice(POOL)])
    return anns, preds


def not_a_tie(x):
    frac = abs(x * 100) % 1
    assert abs(frac - 0.5) > 1e-6, x
    return x


def main(repo):
    anns, preds = make_set()
    out = {
        "produced_by": {
            "command": "python3 tests/data/metrics/make_vqa_fixture.py <GT-Vision-Lab/VQA checkout>",
            "commits": COMMITS,
            "python": sys.version.split()[0],
        },
        "annotations": anns,
        "predictions": {str(k): v for k, v in preds.items()},
    }
    for variant, commit in COMMITS.items():
        vqa_eval = official_class(repo, commit)
        gts = _Index({a["question_id"]: copy.deepcopy(a) for a in anns})
        res = _Index({q: {"question_id": q, "answer": p} for q, p in preds.items()})
        unrounded = vqa_eval(gts, copy.deepcopy(res), n=12)
        with contextlib.redirect_stdout(io.StringIO()):
            unrounded.evaluate()
        gts = _Index({a["question_id"]: copy.deepcopy(a) for a in anns})
        ev = vqa_eval(gts, res, n=2)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
        not_a_tie(unrounded.accuracy["overall"])
        for table in ("perAnswerType", "perQuestionType"):
            for v in unrounded.accuracy[table].values():
                not_a_tie(v)
        out[variant] = {"accuracy": ev.accuracy, "evalQA": {str(k): v for k, v in ev.evalQA.items()}}
    (HERE / "vqa_official_expected.json").write_text(json.dumps(out, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
