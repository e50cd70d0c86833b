"""Formalising logic questions: propositional formulas (truth tables) and syllogisms (Venn models).

`formalise(question)` returns a `Formal` with the expected canonical answer ("yes"/"no") and how it
was derived, or None when the question is not in a recognised form. Recognised:

- symbolic propositional logic — atoms are names, operators `not ~ ¬ !`, `and & ∧`, `or | ∨`,
  `-> => → implies`, `<-> <=> ↔ iff`; questions about tautology/validity, satisfiability,
  contradiction, equivalence, and entailment ("Given p -> q and p, does q follow?");
- plain-English conditionals over the same clauses ("If it rains, the ground is wet. It rains.
  Does it follow that the ground is wet?"), clauses matched by their normalised text;
- categorical syllogisms ("All A are B", "No A are B", "Some A are (not) B", "x is (not) a B"),
  checked over every model of the Venn regions of up to 4 terms (a named individual occupies
  exactly one region).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Callable

Env = dict[str, bool]
Formula = Callable[[Env], bool]
MAX_ATOMS = 12


class LogicParseError(ValueError):
    pass


@dataclass(frozen=True)
class Formal:
    expected: str  # "yes" | "no"
    kind: str  # "tautology", "satisfiable", "contradiction", "equivalent", "entailment", "syllogism"
    note: str = ""


# --- propositional ----------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(<->|<=>|↔|⇔|\biff\b|->|=>|→|⇒|\bimplies\b|&&|&|∧|\band\b|\|\||\||∨|\bor\b|~|¬|!|\bnot\b|\(|\)|\btrue\b|\bfalse\b|[A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)
_OPS = {"<->": "iff", "<=>": "iff", "↔": "iff", "⇔": "iff", "iff": "iff", "->": "imp", "=>": "imp", "→": "imp",
        "⇒": "imp", "implies": "imp", "&&": "and", "&": "and", "∧": "and", "and": "and", "||": "or", "|": "or",
        "∨": "or", "or": "or", "~": "not", "¬": "not", "!": "not", "not": "not"}


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise LogicParseError(f"unexpected text at {text[pos:pos + 20]!r}")
        tok = m.group(1)
        out.append(_OPS.get(tok.lower(), tok))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def parse_formula(text: str) -> tuple[Formula, set[str]]:
    """(evaluator, atoms). Precedence: not > and > or > implies (right-assoc) > iff."""
    toks = _tokens(text)
    atoms: set[str] = set()
    pos = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def binary(sub: Callable[[], Formula], op: str, fn: Callable[[bool, bool], bool], right: bool = False) -> Formula:
        left = sub()
        while peek() == op:
            take()
            rhs = binary(sub, op, fn, right) if right else sub()
            left = (lambda a, b: lambda env: fn(a(env), b(env)))(left, rhs)
            if right:
                break
        return left

    def unary() -> Formula:
        t = peek()
        if t is None:
            raise LogicParseError("formula ends early")
        if t == "not":
            take()
            inner = unary()
            return lambda env: not inner(env)
        if t == "(":
            take()
            f = iff()
            if take() != ")":
                raise LogicParseError("missing ')'")
            return f
        if t in _OPS.values() or t == ")":
            raise LogicParseError(f"unexpected {t!r}")
        take()
        if t.lower() in ("true", "false"):
            val = t.lower() == "true"
            return lambda env: val
        atoms.add(t)
        return lambda env: env[t]

    def conj() -> Formula:
        return binary(unary, "and", lambda a, b: a and b)

    def disj() -> Formula:
        return binary(conj, "or", lambda a, b: a or b)

    def imp() -> Formula:
        return binary(disj, "imp", lambda a, b: (not a) or b, right=True)

    def iff() -> Formula:
        return binary(imp, "iff", lambda a, b: a == b)

    f = iff()
    if pos != len(toks):
        raise LogicParseError(f"unexpected {toks[pos]!r}")
    if len(atoms) > MAX_ATOMS:
        raise LogicParseError(f"more than {MAX_ATOMS} atoms")
    return f, atoms


def _models(atoms: set[str]):  # noqa: ANN202 - generator of assignments
    names = sorted(atoms)
    for values in itertools.product((False, True), repeat=len(names)):
        yield dict(zip(names, values))


def entails(premises: list[str], conclusion: str) -> bool:
    parsed = [parse_formula(p) for p in premises]
    concl, c_atoms = parse_formula(conclusion)
    atoms = set(c_atoms).union(*(a for _, a in parsed)) if parsed else set(c_atoms)
    return all(concl(env) for env in _models(atoms) if all(f(env) for f, _ in parsed))


_SYMBOLIC_HINT = re.compile(r"->|=>|→|<->|↔|∧|∨|¬|~|&|\||\biff\b|\bimplies\b")


def _symbolic(q: str) -> Formal | None:
    if not _SYMBOLIC_HINT.search(q):
        return None
    low = q.lower()
    m = re.search(r"(?:given|premises?:?)\s+(.+?),?\s+(?:does|do|can we conclude|conclusion:?|is it the case that)\s+(.+?)\s*(?:follow|hold)?\s*\??\s*$", q, re.I | re.S)
    if m:
        premises = [p for p in re.split(r",\s*(?:and\s+)?|;\s*|\s+and\s+(?=\S+\s*$)", m.group(1)) if p.strip()]
        concl = re.sub(r"\b(follows?|holds?)\b", "", m.group(2)).strip(" ?.")
        return Formal("yes" if entails(premises, concl) else "no", "entailment")
    m = re.search(r"(?:is|are)\s+(.+?)\s+and\s+(.+?)\s+(?:logically\s+)?equivalent", q, re.I | re.S)
    if m:
        (f, fa), (g, ga) = parse_formula(m.group(1).strip("' \"`")), parse_formula(m.group(2).strip("' \"`"))
        eq = all(f(env) == g(env) for env in _models(fa | ga))
        return Formal("yes" if eq else "no", "equivalent")
    m = re.search(r"(?:is|formula|statement)\s+[:'\"`]?\s*(.+?)\s*['\"`]?\s+(?:a\s+)?(tautology|valid|always true|satisfiable|consistent|a contradiction|contradiction|unsatisfiable|always false)", q, re.I | re.S)
    if not m:
        return None
    f, atoms = parse_formula(m.group(1))
    values = [f(env) for env in _models(atoms)]
    kind = m.group(2).lower().replace("a contradiction", "contradiction")
    if kind in ("tautology", "valid", "always true"):
        return Formal("yes" if all(values) else "no", "tautology")
    if kind in ("satisfiable", "consistent"):
        return Formal("yes" if any(values) else "no", "satisfiable")
    return Formal("yes" if not any(values) else "no", "contradiction")


# --- plain-English conditionals ------------------------------------------------------------------

def _clause_key(text: str) -> tuple[str, bool]:
    """(normalised clause, negated): 'the ground is not wet' -> ('ground is wet', True)."""
    t = re.sub(r"[^a-z0-9' ]", " ", text.lower())
    t = re.sub(r"^\s*(?:then|so|therefore|thus|hence|that|it follows that)\s+", "", t)
    neg = False
    for pat in (r"\bit is not the case that\b", r"\bis not\b", r"\bisn't\b", r"\bare not\b", r"\baren't\b",
                r"\bdoes not\b", r"\bdoesn't\b", r"\bdo not\b", r"\bdon't\b", r"\bnot\b"):
        if re.search(pat, t):
            neg = not neg
            t = re.sub(pat, {"is": "is", "are": "are"}.get(pat.split("\\b")[1].split()[0], ""), t, count=1)
    # Crude stemming so that "it rains" and "it does not rain" name the same clause.
    words = [w[:-1] if w.endswith("s") and len(w) > 3 and not w.endswith("ss") else w
             for w in t.split() if w not in ("the", "a", "an", "then", "does", "do")]
    return " ".join(words), neg


def _english(q: str) -> Formal | None:
    sentences = [s.strip() for s in re.split(r"(?<=[.?!])\s+", q.strip()) if s.strip()]
    if not sentences or not any(re.match(r"(?i)if\b", s) for s in sentences):
        return None
    atoms: dict[str, str] = {}

    def lit(text: str) -> str:
        key, neg = _clause_key(text)
        if not key:
            raise LogicParseError("empty clause")
        name = atoms.setdefault(key, f"p{len(atoms)}")
        return f"~{name}" if neg else name

    premises, conclusion = [], None
    for s in sentences:
        body = s.rstrip(".?!")
        qm = re.match(r"(?i)(?:does it follow that|can we conclude that|is it true that|must it be that|therefore,?|so,?|thus,?|hence,?)\s+(.+)$", body)
        if qm:
            conclusion = lit(re.sub(r"(?i)\s*(?:follow|is this valid|valid)\s*$", "", qm.group(1)))
            continue
        if s.endswith("?"):
            m2 = re.match(r"(?i)(is|are|does|do)\s+(.+)$", body)
            if m2 and conclusion is None:
                # "Is the ground wet?" -> "the ground is wet"
                words = m2.group(2).split()
                conclusion = lit(" ".join(words[:-1] + [m2.group(1).lower()] + words[-1:]) if len(words) > 1 else m2.group(2))
            continue
        m = re.match(r"(?i)if\s+(.+?),?\s+then\s+(.+)$", body) or re.match(r"(?i)if\s+(.+?),\s+(.+)$", body)
        if m:
            premises.append(f"({lit(m.group(1))} -> {lit(m.group(2))})")
            continue
        m = re.match(r"(?i)either\s+(.+?)\s+or\s+(.+)$", body)
        if m:
            premises.append(f"({lit(m.group(1))} | {lit(m.group(2))})")
            continue
        premises.append(lit(body))
    if conclusion is None or not premises:
        return None
    return Formal("yes" if entails(premises, conclusion) else "no", "entailment",
                  note=f"premises {premises}, conclusion {conclusion}, atoms {atoms}")


# --- syllogisms -----------------------------------------------------------------------------------

_IRREGULAR = {"men": "man", "women": "woman", "people": "person", "mice": "mouse", "children": "child",
              "geese": "goose", "feet": "foot", "teeth": "tooth", "cacti": "cactus", "fungi": "fungus"}


def _term(text: str) -> str:
    words = [w for w in re.sub(r"[^a-z0-9 ]", " ", text.lower()).split() if w not in ("a", "an", "the", "things")]
    out = []
    for w in words:
        if w in _IRREGULAR:
            w = _IRREGULAR[w]
        elif w.endswith("ies") and len(w) > 4:
            w = w[:-3] + "y"
        elif w.endswith("s") and not w.endswith("ss") and len(w) > 3:
            w = w[:-1]
        out.append(w)
    return " ".join(out)


_CAT = [
    (re.compile(r"(?i)^all\s+(.+?)\s+are\s+(.+)$"), "A"),
    (re.compile(r"(?i)^every\s+(.+?)\s+is\s+(?:a\s+|an\s+)?(.+)$"), "A"),
    (re.compile(r"(?i)^no\s+(.+?)\s+(?:are|is)\s+(.+)$"), "E"),
    (re.compile(r"(?i)^some\s+(.+?)\s+are\s+not\s+(.+)$"), "O"),
    (re.compile(r"(?i)^some\s+(.+?)\s+(?:are|is)\s+(.+)$"), "I"),
    (re.compile(r"(?i)^([A-Z][a-z]+)\s+is\s+not\s+(?:a\s+|an\s+)?(.+)$"), "sE"),
    (re.compile(r"(?i)^([A-Z][a-z]+)\s+is\s+(?:a\s+|an\s+)?(.+)$"), "sA"),
]


def _categorical(text: str) -> tuple[str, str, str] | None:
    body = text.strip().rstrip(".?!")
    for pat, form in _CAT:
        m = pat.match(body)
        if m:
            # A named individual keeps its name ("Socrates" is not the plural of "Socrate").
            subject = m.group(1).lower() if form.startswith("s") else _term(m.group(1))
            return form, subject, _term(m.group(2))
    return None


def _holds(form: str, s: str, p: str, model: frozenset[frozenset[str]]) -> bool:
    with_s = [r for r in model if s in r]
    if form in ("A", "sA"):
        return all(p in r for r in with_s)
    if form in ("E", "sE"):
        return all(p not in r for r in with_s)
    if form == "I":
        return any(p in r for r in with_s)
    return any(p not in r for r in with_s)  # O


def _syllogism(q: str) -> Formal | None:
    sentences = [s.strip() for s in re.split(r"(?<=[.?!])\s+|\n+", q.strip()) if s.strip()]
    premises, conclusion = [], None
    for s in sentences:
        m = re.match(r"(?i)^(?:therefore|thus|hence|so|conclusion:)(?:\s*,\s*|\s+)(.+)$", s)
        qm = re.match(r"(?i)^(?:does it follow that|can we conclude that|is it true that|must it be that)\s+(.+?)\??$", s)
        if m or qm:
            conclusion = _categorical((m or qm).group(1))  # type: ignore[union-attr]
            continue
        if s.endswith("?"):
            am = re.match(r"(?i)^(is|are)\s+(all|some|no)?\s*(.+?)\s+(not\s+)?(?:a\s+|an\s+)?(\S+(?:\s+\S+)?)\?$", s)
            if am and conclusion is None and not re.search(r"(?i)valid", s):
                quant = (am.group(2) or "").lower()
                subj = am.group(3)
                if quant:
                    text = f"{quant} {subj} are {'not ' if am.group(4) else ''}{am.group(5)}"
                else:
                    text = f"{subj} is {'not ' if am.group(4) else ''}{am.group(5)}"
                conclusion = _categorical(text)
            continue
        c = _categorical(s)
        if c is None:
            return None  # a sentence we do not understand: do not guess
        premises.append(c)
    if conclusion is None or not premises:
        return None
    terms = sorted({t for _, a, b in premises + [conclusion] for t in (a, b)})
    if len(terms) > 4:
        return None
    singulars = {a for f, a, _ in premises + [conclusion] if f.startswith("s")}
    regions = [frozenset(t for t, bit in zip(terms, bits) if bit) for bits in itertools.product((0, 1), repeat=len(terms))]
    regions = [r for r in regions if r]
    valid = True
    for mask in range(1, 2 ** len(regions)):
        model = frozenset(r for i, r in enumerate(regions) if mask >> i & 1)
        if any(sum(1 for r in model if s in r) != 1 for s in singulars):
            continue
        # Existential import for universal premises: the subject terms are non-empty.
        if any(not any(a in r for r in model) for f, a, _ in premises if f == "A"):
            continue
        if all(_holds(f, a, b, model) for f, a, b in premises) and not _holds(*conclusion, model):
            valid = False
            break
    return Formal("yes" if valid else "no", "syllogism", note=f"terms {terms}")


def formalise(question: str) -> Formal | None:
    """The expected answer of a recognised logic question, or None. Raises LogicParseError on a
    recognised form whose formula does not parse."""
    for fn in (_symbolic, _syllogism, _english):
        try:
            f = fn(question)
        except LogicParseError:
            if fn is _symbolic:
                raise
            continue
        if f is not None:
            return f
    return None
