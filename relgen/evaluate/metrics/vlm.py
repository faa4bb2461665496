"""Relation accuracy judged by a vision-language model: RRNet's five questions.

For an image generated from "A R B" (object-swapped twin "B R A") the judge is asked, in order
(the RRNet paper's protocol; the templates are ``eval.judge.questions``):

1. "Is there any A in the image?"  2. "Is there any B in the image?"
3. "Are both A and B present in the image?"
4. "Can you infer the relationship that exists between A and B in the image?"
5. "Is there A R B or B R A or neither?" (the pair in a fixed order, whichever one the image
   was generated from)

*Object generation accuracy* (``object_accuracy``): answers 1, 2 and 3 all yes (question 3
catches a judge that says yes to both objects when they are merged into one).
*Relation accuracy* (``relation_accuracy``): answer 5 names the prompt the image was generated
from. ``relation_and_objects`` is the strict reading, both at once. An answer that parses as
nothing counts as a failure and is counted in ``unparsed``; ``unparsed_rate`` reports the
share of images with any unparseable answer.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import torch

from relgen.errors import ConfigError
from relgen.evaluate.loading import from_pretrained, shared_model, torch_dtype
from relgen.evaluate.metrics.base import RATE, Metric, register_metric
from relgen.evaluate.samples import EvalPrompt, ImageScore, Sample

_YES_FIRST = {"yes", "yeah", "yep", "yup", "correct", "true", "sure", "certainly", "indeed", "affirmative"}
_NO_FIRST = {"no", "nope", "false", "negative", "neither", "none"}
_NEGATIVE = re.compile(
    r"\b(there (is|are) no|there (isn't|aren't)|(is|are|was|were) not|(isn't|aren't)|(does|do|did) not|"
    r"(doesn't|don't|didn't)|cannot|can't|can not|unable|no (visible )?\w+ (is|are|in)|not (present|visible)|"
    r"absent|missing|nothing|neither|none|not)\b")
_POSITIVE = re.compile(
    r"\b(there (is|are)|i (can )?see|(is|are) (present|visible|shown|depicted)|both|"
    r"(shows|depicts|contains|features) (an? |the |two )?)\b")
_ARTICLES = {"a", "an", "the"}
_FIRST = re.compile(r"\b(the )?(first|former)( one| option| prompt)?\b")
_SECOND = re.compile(r"\b(the )?(second|latter)( one| option| prompt)?\b")
_NEGATION_BEFORE = re.compile(r"(\bnot|\bno|\brather than|\binstead of|\bnor)\s*$")


def _answer_words(text: str) -> list[str]:
    """The words of a judge's free-text answer and of the phrases matched in it, split at every
    character that is not a letter, digit or apostrophe ("no-one", "yes." and "Yes," all parse),
    unlike prompts and captions, whose words are split at whitespace by :func:`relgen.text.words`."""
    return re.findall(r"[a-z0-9']+", text.lower().replace("’", "'"))


def parse_yes_no(answer: str) -> Optional[bool]:
    """``True`` for yes, ``False`` for no, ``None`` when the answer says neither.

    An answer that opens with yes/no decides by that word; otherwise a negative phrase
    ("there is no", "is not", "cannot see") means no and an affirmative one ("there is",
    "I see", "is present") yes.
    """
    words = _answer_words(answer)
    if not words:
        return None
    if words[0] in _YES_FIRST:
        return True
    if words[0] in _NO_FIRST:
        return False
    text = " ".join(words)
    if _NEGATIVE.search(text):
        return False
    if _POSITIVE.search(text):
        return True
    return None


def _norm(text: str) -> str:
    return " ".join(w for w in _answer_words(text) if w not in _ARTICLES)


def _mentions(text: str, phrase: str) -> list[int]:
    """Start offsets of ``phrase`` as whole words in ``text`` (both normalised)."""
    if not phrase:
        return []
    return [m.start() for m in re.finditer(rf"(?<![a-z0-9']){re.escape(phrase)}(?![a-z0-9'])", text)]


def parse_choice(answer: str, options: Sequence[tuple[str, str, str]]) -> Optional[str]:
    """Which of the two prompts the answer to question 5 names.

    Args:
        answer: The judge's answer.
        options: ``(prompt, subject, object)`` for the first and the second prompt.

    Returns:
        ``"first"``, ``"second"``, ``"neither"`` or ``None`` (nothing recognisable).

    In order: an answer opening with "neither"/"none" is ``neither``; a prompt written out
    (articles ignored) that is not negated ("not", "rather than") names that prompt; "the
    first"/"the former" and "the second"/"the latter" name by position; else the entity
    mentioned first names the prompt it is the subject of ("The dog is on the cat" names
    "dog on cat"). A mention of "neither" with no prompt named is ``neither``.
    """
    text = _norm(answer)
    if not text:
        return None
    first_word = text.split()[0]
    if first_word in {"neither", "none"}:
        return "neither"
    named = []
    for index, (prompt, _, _) in enumerate(options):
        for pos in _mentions(text, _norm(prompt)):
            if not _NEGATION_BEFORE.search(text[:pos]):
                named.append(index)
                break
    if len(set(named)) == 1:
        return ("first", "second")[named[0]]
    if len(set(named)) > 1:
        return None  # both written out, neither negated: ambiguous
    if re.search(r"\b(neither|none of)\b", text):
        return "neither"
    is_first, is_second = bool(_FIRST.search(text)), bool(_SECOND.search(text))
    if is_first != is_second:
        return "first" if is_first else "second"
    subject, obj = _norm(options[0][1]), _norm(options[0][2])
    at_s, at_o = _mentions(text, subject), _mentions(text, obj)
    if at_s and at_o and at_s[0] != at_o[0]:
        return "first" if at_s[0] < at_o[0] else "second"
    return None


def judge_answers(prompt: EvalPrompt, answers: Sequence[str]) -> ImageScore:
    """Object and relation outcome of one image from the judge's five answers."""
    yes = [parse_yes_no(a) for a in answers[:4]]
    first, second = prompt.pair
    subject_first = prompt.a if prompt.order == 0 else prompt.b
    object_first = prompt.b if prompt.order == 0 else prompt.a
    choice = parse_choice(answers[4], [(first, subject_first, object_first), (second, object_first, subject_first)])
    unparsed = sum(v is None for v in yes[:3]) + (choice is None)
    objects = all(v is True for v in yes[:3])
    relation = choice == ("first", "second")[prompt.order]
    verdict = ("objects ok" if objects else "objects missing") + f", chose {choice or '?'}"
    details = {"answers": list(answers), "yes_no": yes, "choice": choice}
    return ImageScore({"object_accuracy": float(objects), "relation_accuracy": float(relation),
                       "relation_and_objects": float(objects and relation), "unparsed_rate": float(unparsed > 0)},
                      verdict, details=details, unparsed=unparsed)


def questions_for(prompt: EvalPrompt, templates: Sequence[str]) -> list[str]:
    """The five questions with the prompt's entities and pair filled in."""
    first, second = prompt.pair
    return [t.format(a=prompt.a, b=prompt.b, first=first, second=second) for t in templates]


class VisionLanguageJudge:
    """A chat VLM native to transformers (LLaVA-1.5, Qwen2-VL, ...) answering questions about
    images, greedily, through the processor's own chat template.

    Args:
        cfg: :class:`~relgen.evaluate.config.JudgeConfig`.
        device: Where it runs.
    """

    def __init__(self, cfg: Any, device: torch.device):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.cfg = cfg
        self.device = device
        self.dtype = torch_dtype(cfg.dtype, "judge")
        self.processor = from_pretrained(AutoProcessor, cfg.pretrained, "judge", cfg.revision)
        self.processor.tokenizer.padding_side = "left"  # batched generation continues at the right end
        self.model = from_pretrained(AutoModelForImageTextToText, cfg.pretrained, "judge", cfg.revision, dtype=self.dtype)
        self.model.to(device).eval()

    @torch.no_grad()
    def generate(self, images: list[Any], conversations: list[list[dict]]) -> list[str]:
        """One greedy answer per (image, conversation so far)."""
        texts = [self.processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations]
        inputs = self.processor(images=[im.convert("RGB") for im in images], text=texts, padding=True,
                                return_tensors="pt")
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items()}
        out = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]

    def ask(self, images: list[Any], questions: list[list[str]], multi_turn: bool = True) -> list[list[str]]:
        """Answers to each image's questions, in order; in one conversation when ``multi_turn``."""
        answers: list[list[str]] = [[] for _ in images]
        history: list[list[dict]] = [[] for _ in images]
        for turn in range(max(len(q) for q in questions) if questions else 0):
            for start in range(0, len(images), max(1, self.cfg.batch_size)):
                idx = list(range(start, min(len(images), start + self.cfg.batch_size)))
                convs = []
                for i in idx:
                    first = turn == 0 or not multi_turn
                    content = ([{"type": "image"}] if first else []) + [{"type": "text", "text": questions[i][turn]}]
                    convs.append((history[i] if multi_turn else []) + [{"role": "user", "content": content}])
                for i, conv, reply in zip(idx, convs, self.generate([images[i] for i in idx], convs)):
                    answers[i].append(reply)
                    if multi_turn:
                        history[i] = conv + [{"role": "assistant", "content": [{"type": "text", "text": reply}]}]
        return answers


@register_metric
class VlmRelation(Metric):
    """RRNet's judge protocol: object generation accuracy and relation accuracy."""

    name = "vlm_relation"
    outputs = {"object_accuracy": RATE, "relation_accuracy": RATE, "relation_and_objects": RATE,
               "unparsed_rate": RATE}
    config_key = "judge"

    def judge(self) -> VisionLanguageJudge:
        return shared_model("judge", self.cfg, "judge", self.device, lambda: VisionLanguageJudge(self.cfg, self.device))

    def score(self, samples: list[Sample]) -> list[ImageScore]:
        if len(self.cfg.questions) != 5:

            raise ConfigError(f"eval.judge.questions has {len(self.cfg.questions)} templates; the protocol asks 5")
        questions = [questions_for(s.prompt, self.cfg.questions) for s in samples]
        answers = self.judge().ask([s.image for s in samples], questions, self.cfg.multi_turn)
        return [judge_answers(s.prompt, a) for s, a in zip(samples, answers)]
