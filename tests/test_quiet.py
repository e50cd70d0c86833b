"""A normal run prints what the user needs: known third-party noise is filtered, errors are not."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from kaelum import Orchestrator
from kaelum.cli import main
from test_lats_support import ArithmeticDomain, ScriptedLLM

SCRIPT = r"""
import logging, warnings
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
from kaelum.quiet import quiet_third_party
quiet_third_party()
bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "no kernels")
bnb.warning("some other bitsandbytes warning")
bnb.error("Failed to load CPU gemm_4bit_forward: an error stays visible")
import transformers.modeling_utils as mu
warnings.warn_explicit("`is_gradient_checkpointing` is deprecated", FutureWarning, "modeling_utils.py", 1, module=mu.__name__)
warnings.warn("a warning of the user's own code", FutureWarning)
"""


def test_known_noise_is_filtered_and_the_rest_still_shows():
    res = subprocess.run([sys.executable, "-W", "default", "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    err = res.stderr
    assert "kernels-community" not in err  # printed on every kaelum-train, kaelum-eval and serve
    assert "is_gradient_checkpointing" not in err
    assert "some other bitsandbytes warning" in err and "an error stays visible" in err
    assert "a warning of the user's own code" in err


class _Recording(Orchestrator):
    calls: list[str] = []

    def llm_for(self, domain):
        _Recording.calls.append(f"load {domain}")
        return super().llm_for(domain)

    def run(self, query, **kw):
        _Recording.calls.append("run")
        return super().run(query, **kw)


def test_kaelum_run_loads_the_workers_before_its_live_display(tmp_path):
    # A first pull or conversion draws tqdm bars; inside Rich's live display they printed ~40 lines of "[A".
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"query": f"What is 2 + {i}?", "domain": "math"}) + "\n" for i in range(2)))
    _Recording.calls = []

    def make(settings, enable_logging, log_dir):
        return _Recording(settings, enable_logging=enable_logging, log_dir=log_dir, llm=ScriptedLLM(rollout=lambda c: "Answer: 5"),
                          domain_factory=lambda name, options: ArithmeticDomain("5"))

    res = CliRunner().invoke(main, ["run", "--queries", str(queries), "--log-dir", str(tmp_path / "logs"), "--simulations", "1"], obj={"orchestrator_factory": make})
    assert res.exit_code == 0, res.output
    assert _Recording.calls[0] == "load math" and _Recording.calls.index("run") > 0
