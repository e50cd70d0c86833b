"""Safe arithmetic for the math verifier: parse text to sympy, compute a question's value, check step equations.

Nothing here calls `eval` on text (sympy's `parse_expr` does, so it is not used either). Text is
normalised, parsed by Python's `ast` (which only builds a tree), and the tree is translated node by
node into sympy with a whitelist of node types, names and functions. Size limits stop expression
bombs before sympy computes them: `9**9**9` fails on the exponent check, `factorial(10**6)` on the
argument check, and anything longer than `MAX_CHARS` or with more than `MAX_NODES` nodes is refused
(text longer than `MAX_INPUT_CHARS` before it is even normalised).
"""

from __future__ import annotations

import ast
import re
from typing import Any

import sympy

MAX_CHARS = 300
MAX_INPUT_CHARS = 1_000  # before normalisation (LaTeX and spacing shrink it to at most MAX_CHARS)
MAX_NODES = 120
MAX_EXPONENT = 4096
MAX_RESULT_DIGITS = 5000
MAX_FACTORIAL = 500


class MathParseError(ValueError):
    """The text is not an expression this parser accepts (or would be too expensive)."""


_SYMBOLS = {name: sympy.Symbol(name) for name in ("x", "y", "z", "n", "a", "b", "t")}
_CONSTANTS = {"pi": sympy.pi, "e": sympy.E, "π": sympy.pi}


def _bounded(fn):  # noqa: ANN001 - a small decorator for integer-argument functions
    def wrapped(*args: Any) -> Any:
        for a in args:
            if a.is_Number and abs(a) > 10**12:
                raise MathParseError("argument too large")
        return fn(*args)
    return wrapped


def _factorial(n: Any) -> Any:
    if n.is_Number and (not n.is_integer or n < 0 or n > MAX_FACTORIAL):
        raise MathParseError(f"factorial argument must be an integer in 0..{MAX_FACTORIAL}")
    return sympy.factorial(n)


_FUNCTIONS = {
    "sqrt": sympy.sqrt, "cbrt": lambda v: sympy.root(v, 3), "abs": sympy.Abs, "factorial": _factorial,
    "gcd": _bounded(sympy.gcd), "lcm": _bounded(sympy.lcm), "log": sympy.log, "ln": sympy.log, "exp": sympy.exp,
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "floor": sympy.floor, "ceil": sympy.ceiling,
    "round": lambda v: sympy.Integer(round(float(v))), "min": sympy.Min, "max": sympy.Max,
    "binomial": _bounded(sympy.binomial), "comb": _bounded(sympy.binomial),
}


def _digits(v: Any) -> float:
    """Rough decimal digits of a number's magnitude (0 for non-numbers)."""
    try:
        if v.is_Number and v != 0:
            return abs(float(sympy.log(abs(v), 10).evalf(5)))
    except (TypeError, ValueError):
        pass
    return 0.0


def _pow(base: Any, exp: Any) -> Any:
    if exp.is_Number:
        if abs(exp) > MAX_EXPONENT:
            raise MathParseError(f"exponent {exp} is larger than {MAX_EXPONENT}")
        if base.is_Number and _digits(base) * float(abs(exp)) > MAX_RESULT_DIGITS:
            raise MathParseError("result would be too large")
    elif not exp.is_Symbol and not exp.free_symbols:
        raise MathParseError("exponent must be a number")
    return sympy.Pow(base, exp)


_BINOPS = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.Pow: _pow, ast.Mod: lambda a, b: sympy.Mod(a, b),
    ast.FloorDiv: lambda a, b: sympy.floor(a / b),
}


def _to_sympy(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _to_sympy(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        v = node.value
        return sympy.Integer(v) if isinstance(v, int) else sympy.Rational(repr(v))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _to_sympy(node.left), _to_sympy(node.right)
        if isinstance(node.op, (ast.Div, ast.Mod, ast.FloorDiv)) and b == 0:
            raise MathParseError("division by zero")
        return _BINOPS[type(node.op)](a, b)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _to_sympy(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if node.id in _SYMBOLS:
            return _SYMBOLS[node.id]
        raise MathParseError(f"unknown name {node.id!r}")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS and not node.keywords:
        if len(node.args) > 8:
            raise MathParseError("too many arguments")
        return _FUNCTIONS[node.func.id](*[_to_sympy(a) for a in node.args])
    raise MathParseError(f"unsupported syntax: {type(node).__name__}")


_LATEX = [
    (re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r"((\1)/(\2))"),
    (re.compile(r"\\sqrt\s*\{([^{}]*)\}"), r"sqrt(\1)"),
    (re.compile(r"\\(?:cdot|times)"), "*"),
    (re.compile(r"\\div"), "/"),
    (re.compile(r"\\(?:left|right)"), ""),
    (re.compile(r"\\pi"), "pi"),
    (re.compile(r"[{}]"), ""),
]
_IMPLICIT_MUL = [
    (re.compile(r"(?<=\d)\s*(?=[a-z(√π])"), "*"),  # 2x, 3(4), 2π
    (re.compile(r"\)\s*(?=[\d(a-z])"), ")*"),  # (2)(3), (x+1)2
]
_NUM_COMMAS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def normalise_expr(text: str) -> str:
    """Plain-text and LaTeX math to Python syntax: ^ → **, × → *, 1,000 → 1000, 2x → 2*x, √9 → sqrt(9)."""
    s = text.strip()
    for pat, rep in _LATEX:
        s = pat.sub(rep, s)
    s = _NUM_COMMAS.sub("", s)
    s = s.replace("$", "").replace("−", "-").replace("–", "-").replace("·", "*").replace("×", "*").replace("÷", "/")
    s = re.sub(r"(?<=\d)\s*[xX]\s*(?=\d)", "*", s)  # "3 x 4" as multiplication
    s = re.sub(r"√\s*(\d+(?:\.\d+)?|\([^()]*\))", r"sqrt(\1)", s)
    s = re.sub(r"(\d+)\s*!", r"factorial(\1)", s)
    s = s.replace("^", "**")
    s = s.lower()
    for pat, rep in _IMPLICIT_MUL:
        s = pat.sub(rep, s)
    return s.strip()


def parse_expr(text: str) -> Any:
    """A sympy expression for `text`, or MathParseError. Safe on any input."""
    if len(text) > MAX_INPUT_CHARS:
        # Checked before normalising: its regexes take quadratic time on a long run of digits.
        raise MathParseError(f"text longer than {MAX_INPUT_CHARS} characters")
    s = normalise_expr(text)
    if not s:
        raise MathParseError("empty expression")
    if len(s) > MAX_CHARS:
        raise MathParseError(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(s, mode="eval")
    except (SyntaxError, ValueError) as e:
        raise MathParseError(f"not an expression: {s!r}") from e
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise MathParseError(f"expression has more than {MAX_NODES} parts")
    try:
        return _to_sympy(tree)
    except MathParseError:
        raise
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError, AttributeError) as e:
        raise MathParseError(f"cannot evaluate {s!r}: {e}") from e


def parse_number(text: str) -> Any | None:
    """A closed-form number (no free symbols) for `text`, or None."""
    try:
        v = parse_expr(text)
    except MathParseError:
        return None
    if getattr(v, "free_symbols", None):
        return None
    if v.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        return None
    return v


def decimals_of(text: str) -> int:
    m = re.search(r"\d\.(\d+)\s*$", text.strip())
    return len(m.group(1)) if m else 0


def same_value(answer: Any, expected: Any, answer_text: str = "") -> bool:
    """Exact equality, a relative error below 1e-9, or equality after rounding to the answer's ≥2 decimals."""
    try:
        diff = sympy.nsimplify(answer - expected) if not (answer.is_Float or expected.is_Float) else answer - expected
        if diff == 0:
            return True
        a, e = complex(sympy.N(answer, 30)), complex(sympy.N(expected, 30))
    except (TypeError, ValueError, AttributeError):
        try:
            return bool(sympy.simplify(answer - expected) == 0)
        except Exception:  # noqa: BLE001 - anything sympy cannot decide is "not the same"
            return False
    if abs(a - e) <= 1e-9 * max(1.0, abs(e)):
        return True
    d = decimals_of(answer_text)
    if d >= 2 and a.imag == 0 and e.imag == 0:
        return round(e.real, d) == round(a.real, d)
    return False


# --- what the question asks -----------------------------------------------------------------

_NUM = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
_WORD_OPS = [
    (r"\bmultiplied\s+by\b", "*"), (r"\btimes\b", "*"), (r"\bdivided\s+by\b", "/"), (r"\bover\b", "/"),
    (r"\bplus\b", "+"), (r"\bminus\b", "-"), (r"\bto\s+the\s+power\s+of\b", "^"), (r"\bsquared\b", "^2"),
    (r"\bcubed\b", "^3"), (r"\bmod(?:ulo)?\b", "%"),
]
_PHRASES: list[tuple[re.Pattern[str], Any]] = []


def _phrase(pattern: str):  # noqa: ANN202 - registers a question form
    def register(fn):  # noqa: ANN001, ANN202
        _PHRASES.append((re.compile(pattern, re.IGNORECASE), fn))
        return fn
    return register


def _n(s: str) -> Any:
    v = parse_number(s)
    if v is None:
        raise MathParseError(f"not a number: {s!r}")
    return v


@_phrase(rf"({_NUM})\s*(?:%|percent)\s+of\s+({_NUM})")
def _percent_of(m: re.Match[str]) -> Any:
    return _n(m.group(1)) * _n(m.group(2)) / 100


@_phrase(rf"what\s+percent(?:age)?\s+of\s+({_NUM})\s+is\s+({_NUM})")
def _what_percent(m: re.Match[str]) -> Any:
    return _n(m.group(2)) * 100 / _n(m.group(1))


@_phrase(rf"sum\s+of\s+(?:all\s+)?(?:the\s+)?(?:integers|numbers|whole\s+numbers)?\s*(?:from\s+)?({_NUM})\s+(?:to|through|and)\s+({_NUM})\s*(?:inclusive)?\s*\??\s*$")
def _sum_range(m: re.Match[str]) -> Any:
    a, b = _n(m.group(1)), _n(m.group(2))
    if not (a.is_integer and b.is_integer) or b - a > 10**9:
        raise MathParseError("range bounds must be integers")
    if "and" in m.group(0).lower().split(m.group(1))[1].split(m.group(2))[0] and "from" not in m.group(0).lower():
        return a + b  # "sum of 3 and 4"
    return (a + b) * (b - a + 1) / 2


@_phrase(r"sum\s+of\s+the\s+first\s+(\d+)\s+(positive\s+integers|natural\s+numbers|odd\s+numbers|even\s+numbers|positive\s+odd\s+numbers|positive\s+even\s+numbers)")
def _sum_first(m: re.Match[str]) -> Any:
    k = _n(m.group(1))
    kind = m.group(2).lower()
    if "odd" in kind:
        return k**2
    if "even" in kind:
        return k * (k + 1)
    return k * (k + 1) / 2


@_phrase(rf"(sum|product|difference|quotient)\s+(?:of|between)\s+({_NUM})\s+and\s+({_NUM})")
def _two_operands(m: re.Match[str]) -> Any:
    a, b = _n(m.group(2)), _n(m.group(3))
    op = m.group(1).lower()
    if op == "quotient" and b == 0:
        raise MathParseError("division by zero")
    return {"sum": a + b, "product": a * b, "difference": a - b, "quotient": a / b if b != 0 else 0}[op]


@_phrase(rf"(?:greatest\s+common\s+divisor|gcd|highest\s+common\s+factor|hcf)\s+of\s+({_NUM})\s+and\s+({_NUM})")
def _gcd(m: re.Match[str]) -> Any:
    return sympy.gcd(_n(m.group(1)), _n(m.group(2)))


@_phrase(rf"(?:least\s+common\s+multiple|lowest\s+common\s+multiple|lcm)\s+of\s+({_NUM})\s+and\s+({_NUM})")
def _lcm(m: re.Match[str]) -> Any:
    return sympy.lcm(_n(m.group(1)), _n(m.group(2)))


@_phrase(rf"(square|cube)\s+root\s+of\s+({_NUM})")
def _root(m: re.Match[str]) -> Any:
    return sympy.root(_n(m.group(2)), 2 if m.group(1).lower() == "square" else 3)


@_phrase(rf"(?:the\s+)?(square|cube)\s+of\s+({_NUM})")
def _power_word(m: re.Match[str]) -> Any:
    return _n(m.group(2)) ** (2 if m.group(1).lower() == "square" else 3)


@_phrase(rf"factorial\s+of\s+({_NUM})")
def _factorial_word(m: re.Match[str]) -> Any:
    return _factorial(_n(m.group(1)))


@_phrase(rf"remainder\s+when\s+({_NUM})\s+is\s+divided\s+by\s+({_NUM})")
def _remainder(m: re.Match[str]) -> Any:
    b = _n(m.group(2))
    if b == 0:
        raise MathParseError("division by zero")
    return sympy.Mod(_n(m.group(1)), b)


@_phrase(rf"(?:average|mean)\s+of\s+((?:{_NUM}\s*(?:,|and)?\s*)+)")
def _mean(m: re.Match[str]) -> Any:
    nums = [_n(x) for x in re.findall(r"-?\d+(?:\.\d+)?", m.group(1).replace(",", " "))]
    if len(nums) < 2:
        raise MathParseError("need at least two numbers")
    return sympy.Add(*nums) / len(nums)


_LEAD = re.compile(
    r"^\s*(?:please\s+)?(?:what\s+is|what's|whats|compute|calculate|evaluate|find|simplify|work\s+out|determine)"
    r"(?:\s+the\s+value\s+of)?\s*:?\s*", re.IGNORECASE)
_ARITH_RUN = re.compile(r"[\d\s.+\-*/^()×÷%!√πx,]+")
_SOLVE = re.compile(r"^\s*(?:solve|find\s+x|find\s+the\s+value\s+of\s+x)\b(?:\s+for\s+x)?\s*(?:if|when|given|in)?\s*:?\s*(.+?)\s*[.?]?\s*$",
                    re.IGNORECASE | re.DOTALL)


def _word_ops(text: str) -> str:
    for pat, rep in _WORD_OPS:
        text = re.sub(pat, rep, text, flags=re.IGNORECASE)
    return text


def _solve(equation: str) -> Any | None:
    if equation.count("=") != 1:
        return None
    left, right = equation.split("=")
    try:
        expr = parse_expr(left) - parse_expr(right)
    except MathParseError:
        return None
    syms = expr.free_symbols
    if len(syms) != 1:
        return None
    sym = next(iter(syms))
    try:
        sols = [s for s in sympy.solve(sympy.Eq(expr, 0), sym) if s.is_real is not False]
    except (NotImplementedError, ValueError, TypeError):
        return None
    if not sols:
        return None
    return sols[0] if len(sols) == 1 else sympy.FiniteSet(*sols)


def compute_expected(question: str) -> tuple[Any, str] | None:
    """(value, how) for a question whose answer can be computed, else None.

    `value` is a sympy number, or a FiniteSet when an equation has several solutions. `how` names
    the form recognised ("expression", "percent_of", "solve", ...), for the verdict details.
    """
    q = question.strip()
    if len(q) > 2000:
        return None
    m = _SOLVE.match(q)
    if m and "=" in m.group(1):
        sol = _solve(_word_ops(m.group(1)))
        return (sol, "solve") if sol is not None else None
    for pattern, fn in _PHRASES:
        m = pattern.search(q)
        if m:
            try:
                return fn(m), fn.__name__.lstrip("_")
            except MathParseError:
                return None
    body = _LEAD.sub("", _word_ops(q), count=1).strip().rstrip("?. ")
    body = re.sub(r"(?<!\d)!+$", "", body).strip()  # "5!" is a factorial, "Compute 2+2!" is not
    body = re.sub(r"(?<=\d)\s*[xX]\s*(?=\d)", "*", body)
    body = re.sub(r"^(?:the\s+)?(?:value\s+of\s+|result\s+of\s+)", "", body, flags=re.IGNORECASE)
    if "=" in body:
        return None  # an equation without "solve": not a plain computation
    if not _ARITH_RUN.fullmatch(body):
        return None
    if not re.search(r"\d", body) or not re.search(r"[+\-*/^×÷%!√]|\*\*", body.replace(",", "")):
        return None
    v = parse_number(body)
    return (v, "expression") if v is not None else None


# --- equations written in the steps -----------------------------------------------------------

_EQ_SIDE = r"[\d\s.+\-*/^()×÷%,$√]*\d[\d\s.+\-*/^()×÷%,$√]*"


def step_equations(steps: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    """Every purely numeric `lhs = rhs` (chains too) in the steps, each checked: {"text", "ok"}.

    Only equations with an operator on one side count ("7 = 7" says nothing); sides are kept to
    digits and operators, so "x = 4" or "apples = 3" are not arithmetic claims.
    """
    out: list[dict[str, Any]] = []
    for step in steps:
        text = re.sub(r"\b(?:x|times)\b(?=\s*\d)", "*", step)
        for chain in re.finditer(rf"{_EQ_SIDE}(?:=\s*{_EQ_SIDE})+", text):
            sides = [s.strip().strip(",").rstrip(".") for s in chain.group(0).split("=")]
            sides = [s for s in sides if s]
            if not re.search(r"\d\s*[+\-*/^×÷%]\s*[\d(]|\)\s*[\^*/+\-]|√", " ".join(sides)):
                continue
            for lhs, rhs in zip(sides, sides[1:]):
                a, b = parse_number(lhs), parse_number(rhs)
                if a is None or b is None:
                    continue
                ok = same_value(a, b, rhs) or same_value(b, a, lhs)
                out.append({"text": f"{lhs} = {rhs}", "ok": bool(ok)})
    return out


def fmt(v: Any) -> str:
    """A short printable form of a value for verdict details."""
    try:
        if isinstance(v, sympy.FiniteSet):
            return "{" + ", ".join(fmt(x) for x in v) + "}"
        if v.is_Integer:
            return str(int(v))
        if v.is_Rational:
            return f"{v} (= {float(v):.6g})"
        return f"{sympy.nsimplify(v)} (≈ {float(sympy.N(v)):.6g})" if v.is_number else str(v)
    except (TypeError, ValueError):
        return str(v)


__all__ = ["MathParseError", "parse_expr", "parse_number", "same_value", "compute_expected", "step_equations",
           "normalise_expr", "fmt"]
